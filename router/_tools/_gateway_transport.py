"""The gateway in process: an ``httpx`` transport over the gateway's own endpoint code.

An app written against the official OpenAI or Anthropic SDK gets routing without a
server by handing the SDK an ``httpx.AsyncClient`` whose transport is a
:class:`GatewayTransport`: each request the SDK builds is answered by
:meth:`~router._tools._gateway.Gateway.handle`, the code ``llm-router serve`` runs
behind hypercorn (one path: the same routing, translation, deadline and error replies),
with no socket in between.

Streams are not buffered: the response's body is a :class:`httpx.AsyncByteStream` that
reads the router's stream chunk by chunk as the SDK reads the response.  Closing the
response (the SDK's ``async with``, or reaching the end) closes the router's stream and
its upstream connection; so does a read that fails or is cancelled, so a caller's cancel
scope that fires mid-stream cancels the upstream exchange at once, even if the response
is never closed.

Nothing here owns the router: the transport answers while the router is open, and
closing the transport (or the client) leaves the router alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, overload

import httpx

from router import Router
from router.config import RouterConfig

from ._gateway import Gateway, Inbound, Reply

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

try:
    # httpx's successor, which the Anthropic SDK (and the OpenAI SDK, beside httpx)
    # takes as its http_client: the transport is one for both packages when present.
    import httpx2
except ImportError:  # pragma: no cover - the SDKs bring it; without them, httpx alone

    class httpx2:  # type: ignore[no-redef]
        class AsyncBaseTransport:
            pass

        class AsyncByteStream:
            pass

        class Request:
            pass

        Response = httpx.Response


__all__ = ["GatewayTransport"]


class GatewayTransport(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):
    """The gateway as an ``httpx`` transport: the OpenAI and Anthropic SDKs, in process.

    Give it to an ``httpx.AsyncClient`` and that client to the SDK; the SDK's base URL
    is any ``http`` URL (its host is never contacted) whose path is the gateway's: end it
    in ``/v1`` for OpenAI's SDK, nothing for Anthropic's.  It serves every gateway
    endpoint (``/v1/chat/completions``, ``/v1/messages``, ``/v1/embeddings``,
    ``/v1/models``, ``/healthz``, ``/readyz``, ``/metrics``) with the same statuses,
    bodies and headers as ``llm-router serve``.  ``x-request-timeout`` sets a request's
    deadline as it does over HTTP; the SDKs' own ``timeout=`` is an ``httpx`` network
    timeout, which no network enforces here: use a trio cancel scope.

    Example::

        async with open_router(config) as router:
            transport = GatewayTransport(router, config)
            client = openai.AsyncOpenAI(
                base_url="http://router.invalid/v1",
                api_key="unused",
                http_client=httpx.AsyncClient(transport=transport),
            )
            reply = await client.chat.completions.create(model="fast", messages=[...])
    """

    def __init__(
        self,
        router: Router,
        config: RouterConfig,
        *,
        metrics_registry: CollectorRegistry | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        #: The endpoint code this transport calls (the ASGI app's ``Gateway``).
        self.gateway = Gateway(router, config, metrics_registry=metrics_registry, secrets_=secrets)

    def __repr__(self) -> str:
        return f"<GatewayTransport over {self.gateway.router!r}>"

    @overload
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...
    @overload
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response: ...

    async def handle_async_request(
        self, request: httpx.Request | httpx2.Request
    ) -> httpx.Response | httpx2.Response:
        """Answer ``request`` with the gateway's endpoint code, in this task.

        A stream's response reads the router's stream as its body is read; a request's
        failure is an error response (never an exception), as over HTTP.
        """
        gateway = self.gateway
        body = await request.aread()
        inbound = Inbound(
            request.method,
            request.url.path,
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw},
            body,
        )
        too_large = gateway.body_too_large(inbound.path, len(body))
        if too_large is not None:
            return _response(too_large, request)
        stack = AsyncExitStack()
        try:
            reply = await gateway.handle(inbound, stack)
        except BaseException as exc:
            # Cancelled while the router opened a stream: close what was opened.
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        chunks = reply.chunks
        if chunks is None:
            await stack.aclose()
            return _response(reply, request)
        return _response(reply, request, _ReplyStream(chunks, stack))


def _response(
    reply: Reply, request: httpx.Request | httpx2.Request, stream: _ReplyStream | None = None
) -> httpx.Response | httpx2.Response:
    """The reply as a response of the request's own package (httpx's or httpx2's); a
    HEAD request's has no body, as over HTTP."""
    if request.method == "HEAD":
        reply = Reply(reply.status, reply.headers)
    if isinstance(request, httpx.Request):
        if stream is None:
            return httpx.Response(
                reply.status, headers=reply.headers, content=reply.body, request=request
            )
        return httpx.Response(reply.status, headers=reply.headers, stream=stream, request=request)
    if stream is None:
        return httpx2.Response(
            reply.status, headers=reply.headers, content=reply.body, request=request
        )
    return httpx2.Response(reply.status, headers=reply.headers, stream=stream, request=request)


class _ReplyStream(httpx.AsyncByteStream, httpx2.AsyncByteStream):
    """A streaming reply's body: the router's stream, read as the response is read.

    ``aclose`` (httpx calls it when the response is closed or read to its end) closes
    the router's stream; so does a read that raises, cancellation included, so the
    upstream connection never outlives a caller who stopped reading.
    """

    __slots__ = ("_chunks", "_closed", "_stack")

    def __init__(self, chunks: AsyncIterator[bytes], stack: AsyncExitStack) -> None:
        self._chunks = chunks
        self._stack = stack
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # An iterator object, not an async generator: nothing for the garbage collector
        # to finalize if the caller stops reading.
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stack.aclose()
