"""The gateway: OpenAI- and Anthropic-compatible HTTP endpoints over one open router.

Two layers, so that anything able to hand over a request's method, path, headers and
body can serve the same code (hypercorn through the ASGI app here; an ``httpx``
transport in process):

- :class:`Gateway` knows no ASGI.  :meth:`Gateway.handle` takes an :class:`Inbound`
  (the parsed HTTP request) and returns a :class:`Reply` (status, headers, and a body or
  an async iterator of body chunks).  It routes by path, asks :meth:`Gateway.authenticate`
  who the caller is, applies the request's deadline, and calls one method per endpoint
  (:meth:`Gateway.chat_completions`, :meth:`Gateway.messages`, :meth:`Gateway.embeddings`,
  :meth:`Gateway.models`, ...), each of which takes the parsed request and returns its
  reply.  Every failure becomes a reply in the endpoint's vendor error shape
  (:func:`failure`), never an exception.
- :class:`GatewayApp` is the ASGI callable: it reads the body (up to
  ``gateway.max_body_bytes``), watches for the client's disconnect while the request
  runs (a disconnect cancels the request, and so its upstream exchange, at once), and
  writes the reply.

A stream's reply is built once the router has committed it (its first content event),
so the response headers name the provider that answers.  Its chunks are encoded as
they arrive; a failure after the first byte is the dialect's in-stream error event,
and the stream ends without its terminator.

Deadlines: ``x-request-timeout`` (seconds) is a cancel scope around the router call and
each read of the stream; when it passes, the client gets a 504 (or, mid-stream, an
error event).  No deadline costs nothing: no scope is opened.

Response headers (every reply): ``x-llm-router-request-id``; when a provider answered
also ``x-llm-router-provider``, ``-model``, ``-attempts`` and (when priced, and not on
streams) ``-cost``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import secrets
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec
import trio

from providers import (
    AllProvidersFailed,
    AuthenticationError,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    EmbeddingResponse,
    InvalidOutput,
    InvalidRequest,
    LLMError,
    NoRoute,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    RouterClosed,
    Scrubber,
    ServerError,
    StreamEvent,
    StreamInterrupted,
    Timeout,
)
from router import Router, RouterStream
from router.config import RouterConfig

from . import _gateway_anthropic as anthropic
from . import _gateway_openai as openai
from ._commands import model_rows
from ._gateway_keys import GatewayKeys, KeyState
from ._gateway_wire import BadRequest

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("trio_llm_router")

__all__ = [
    "ANONYMOUS",
    "Caller",
    "Failure",
    "Gateway",
    "GatewayApp",
    "Inbound",
    "Reply",
    "failure",
    "is_loopback",
]

Dialect: TypeAlias = Literal["openai", "anthropic"]
Headers: TypeAlias = list[tuple[bytes, bytes]]
Scope: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON: Headers = [(b"content-type", b"application/json")]
_SSE: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Inbound:
    """One HTTP request, parsed: what :meth:`Gateway.handle` takes.

    ``headers`` has lower-case names; ``client`` is the peer's address (``None`` when
    the request did not come over a socket).
    """

    __slots__ = ("body", "client", "headers", "method", "path")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        client: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.client = client


class Reply:
    """What :meth:`Gateway.handle` returns: a status, headers, and a body or chunks.

    ``chunks`` is set for a stream (and ``body`` is then empty): read it to the end, in
    the task that called ``handle``, before the ``AsyncExitStack`` given to ``handle``
    closes (closing it closes the stream and its upstream connection).
    """

    __slots__ = ("body", "chunks", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes = b"",
        chunks: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.chunks = chunks


class Caller(msgspec.Struct, frozen=True):
    """Who sent a request, as :meth:`Gateway.authenticate` found: ``key`` is the gateway
    key's name (``None``: no key, a loopback client of a gateway without keys)."""

    key: str | None = None


#: The caller of a gateway without keys (loopback clients only).
ANONYMOUS = Caller()


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; ``None`` does not)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- failures


class Failure(msgspec.Struct, frozen=True):
    """How one failure is answered: status and each dialect's error type and code."""

    status: int
    openai_type: str
    anthropic_type: str
    code: str | None = None
    retry_after: float | None = None


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def _failure(status: int, code: str | None = None, retry_after: float | None = None) -> Failure:
    return Failure(
        status=status,
        openai_type=_OPENAI_TYPES[status],
        anthropic_type=_ANTHROPIC_TYPES[status],
        code=code,
        retry_after=retry_after,
    )


def failure(exc: LLMError) -> Failure:
    """How the gateway answers the router's error ``exc``.

    ===============================================  =====  ============================
    error                                            status  why
    ===============================================  =====  ============================
    InvalidRequest (ContextLengthExceeded,           400    the client's request is wrong
    UnsupportedFeature), ContentFiltered
    NoRoute, NotFound                                404    no such model or route
    RateLimited; BudgetExceeded; AllProvidersFailed  429    a limit refused it; come back
    whose every error is a rate limit                       after ``retry-after``
    Timeout                                          504    the upstream took too long
    Overloaded, QuotaExceeded, RouterClosed;         503    nothing can serve it now
    AllProvidersFailed that may succeed on retry
    AuthenticationError, PermissionDenied,           502    an upstream failed (its key,
    ServerError, ConnectionFailed, ProtocolError,           its answer, its connection):
    InvalidOutput, StreamInterrupted; the other             never 401/403, which would
    AllProvidersFailed                                      blame the client's key
    anything else                                    500
    ===============================================  =====  ============================
    """
    if isinstance(exc, ContextLengthExceeded):
        return _failure(400, "context_length_exceeded")
    if isinstance(exc, InvalidRequest):
        return _failure(400)
    if isinstance(exc, ContentFiltered):
        return _failure(400, "content_filter")
    if isinstance(exc, NoRoute | NotFound):
        return _failure(404, "model_not_found")
    if isinstance(exc, RateLimited):
        return _failure(429, "rate_limit_exceeded", exc.retry_after)
    if isinstance(exc, BudgetExceeded):
        return _failure(429, "insufficient_quota", exc.retry_after)
    if isinstance(exc, AllProvidersFailed):
        errors = exc.errors
        if errors and all(isinstance(e, RateLimited) for e in errors):
            waits = [e.retry_after for e in errors if e.retry_after is not None]
            return _failure(429, "rate_limit_exceeded", min(waits) if waits else None)
        return _failure(503 if exc.retryable else 502, "all_providers_failed")
    if isinstance(exc, Timeout):
        return _failure(504, "upstream_timeout")
    if isinstance(exc, Overloaded | QuotaExceeded | RouterClosed):
        return _failure(503)
    if isinstance(
        exc,
        AuthenticationError
        | PermissionDenied
        | ServerError
        | ConnectionFailed
        | ProtocolError
        | InvalidOutput
        | StreamInterrupted,
    ):
        return _failure(502, "upstream_error")
    return _failure(500)


#: The longest ``retry-after`` the gateway sends: a year (a monthly spend cap's reset
#: fits; an upstream's ``retry-after: inf`` becomes this).
MAX_RETRY_AFTER = 365 * 86400


def retry_after_header(wait: float | None) -> bytes:
    """``retry-after`` for a refusal that gives ``wait`` seconds: whole seconds, rounded
    up (a client must not come back early), at least 1, at most :data:`MAX_RETRY_AFTER`.

    ``wait`` comes from upstream headers too: ``None``, NaN or a negative number is 1,
    infinity or anything huge is :data:`MAX_RETRY_AFTER` (never an arithmetic error).
    """
    if wait is None or not wait >= 0:
        return b"1"
    return str(max(1, math.ceil(min(wait, MAX_RETRY_AFTER)))).encode()


def _attempts(exc: LLMError, scrub: Scrubber) -> list[dict[str, Any]]:
    """The attempt summary an error body carries: who was tried, and what became of it."""
    return [
        {
            "provider": a.provider,
            "model": a.model,
            "outcome": a.outcome,
            "error_type": a.error_type,
            "reason": scrub(a.reason) if a.reason else a.reason,
        }
        for a in exc.attempts
    ]


# --------------------------------------------------------------------------- the gateway

Endpoint: TypeAlias = Callable[
    ["Gateway", Inbound, Caller, AsyncExitStack, str, "float | None"], Awaitable[Reply]
]


class Gateway:
    """The endpoints over one open router, independent of ASGI (see the module doc).

    Example::

        gateway = Gateway(router, config)
        async with AsyncExitStack() as stack:
            reply = await gateway.handle(Inbound("GET", "/healthz", {}), stack)
    """

    def __init__(
        self,
        router: Router,
        config: RouterConfig,
        *,
        metrics_registry: CollectorRegistry | None = None,
        secrets_: tuple[str, ...] = (),
    ) -> None:
        self.router = router
        self.config = config
        self.settings = config.gateway
        self._metrics = metrics_registry
        self._scrub = Scrubber(secrets_)
        self._prefix = secrets.token_hex(4)
        self._sequence = 0
        #: Requests the ASGI app is answering now (streams included), for the shutdown
        #: message.
        self.in_flight = 0
        self._openai_models, self._anthropic_models = _model_lists(config)
        # Gateway keys (docs/gateway.md, "Keys"): None without any, and then nothing
        # below costs a request anything.
        self.keys: GatewayKeys | None = None
        self._callers: dict[str, Caller] = {}
        self._key_models: dict[str | None, tuple[bytes, bytes]] = {}
        if config.gateway.keys:
            keys = self.keys = GatewayKeys(config, shared=router._key_limits, client=router._shared)
            for name, state in keys.by_name.items():
                self._callers[name] = Caller(key=name)
                self._key_models[name] = _model_lists(
                    config, functools.partial(keys.allows_listed, state)
                )

    # -- the seams ---------------------------------------------------------------------

    def authenticate(self, inbound: Inbound) -> Caller:
        """Who sent ``inbound``; raise :class:`BadRequest` (status 401/403) to refuse.

        With gateway keys, every endpoint but ``/healthz`` and ``/readyz`` needs one
        (``Authorization: Bearer <key>`` or ``x-api-key``), from any address: a missing
        or unknown key is a 401.  Without gateway keys only loopback clients (and
        in-process callers, with no ``client``) are served: anyone else gets a 403.
        """
        keys = self.keys
        if keys is not None:
            if inbound.path in _OPEN_PATHS:
                return ANONYMOUS
            return self._callers[keys.identify(inbound.headers).name]
        if inbound.client is not None and not is_loopback(inbound.client):
            raise BadRequest(
                "this gateway has no keys configured, so it serves loopback clients only",
                status=403,
            )
        return ANONYMOUS

    def _deadline(self, inbound: Inbound) -> float | None:
        """The request's deadline (trio time): ``x-request-timeout`` or the default."""
        text = inbound.headers.get("x-request-timeout")
        settings = self.settings
        if text is None:
            seconds = settings.default_timeout
            if seconds is None:
                return None
        else:
            try:
                seconds = float(text)
            except ValueError:
                seconds = math.nan
            if not 0 < seconds < math.inf:
                raise BadRequest(
                    f"x-request-timeout must be a positive number of seconds, got {text[:40]!r}"
                )
            if settings.max_timeout is not None and seconds > settings.max_timeout:
                raise BadRequest(
                    f"x-request-timeout may be at most {settings.max_timeout:g} seconds "
                    f"here, got {seconds:g}"
                )
        return trio.current_time() + seconds

    def _request_id(self) -> str:
        self._sequence += 1
        return f"gw-{self._prefix}-{self._sequence}"

    async def handle(self, inbound: Inbound, stack: AsyncExitStack) -> Reply:
        """Answer ``inbound``: route it, authenticate it, run it under its deadline.

        Never raises for a request's failure: every one is a reply in the endpoint's
        vendor error shape.  A stream's chunks must be read before ``stack`` closes.
        """
        dialect: Dialect = "anthropic" if inbound.path.startswith("/v1/messages") else "openai"
        request_id = self._request_id()
        try:
            # Who it is comes first: a caller refused learns nothing, not even the paths.
            caller = self.authenticate(inbound)
            route = _ROUTES.get(inbound.path)
            if route is None:
                raise BadRequest(
                    f"no endpoint {inbound.method[:10]} {inbound.path[:100]}", status=404
                )
            method, endpoint = route
            # HEAD is GET without the body (RFC 9110): the server drops the body.
            if inbound.method != method and not (method == "GET" and inbound.method == "HEAD"):
                reply = self.error_reply(
                    dialect,
                    _failure(405),
                    f"{inbound.path} takes {method}, not {inbound.method[:10]}",
                    request_id,
                )
                reply.headers.append((b"allow", b"GET, HEAD" if method == "GET" else b"POST"))
                return reply
            deadline = self._deadline(inbound)
            if deadline is None:
                return await endpoint(self, inbound, caller, stack, request_id, None)
            with trio.move_on_at(deadline):
                return await endpoint(self, inbound, caller, stack, request_id, deadline)
            return self.error_reply(
                dialect, _failure(504, "deadline_exceeded"), _DEADLINE_PASSED, request_id
            )
        except BadRequest as exc:
            return self.error_reply(
                dialect, _failure(exc.status, exc.code), exc.message, request_id, exc.param
            )
        except LLMError as exc:
            return self.llm_error_reply(dialect, exc, request_id)
        except Exception as exc:  # a bug of ours: logged, and a 500 in the vendor's shape
            return self.internal_error(dialect, exc, request_id, inbound)

    # -- replies -----------------------------------------------------------------------

    def body_too_large(self, path: str, size: int) -> Reply | None:
        """The 413 for a request body of ``size`` bytes to ``path``, or ``None`` if it fits."""
        limit = self.settings.max_body_bytes
        if size <= limit:
            return None
        dialect: Dialect = "anthropic" if path == "/v1/messages" else "openai"
        return self.error_reply(
            dialect,
            _failure(413),
            f"the request body exceeds the gateway's limit of {limit} bytes",
            self._request_id(),
        )

    def body_too_slow(self, path: str) -> Reply:
        """The 408 for a request body not received within ``gateway.body_timeout``."""
        dialect: Dialect = "anthropic" if path == "/v1/messages" else "openai"
        return self.error_reply(
            dialect,
            _failure(408, "body_timeout"),
            f"the request body did not arrive within {self.settings.body_timeout:g} seconds",
            self._request_id(),
        )

    def error_reply(
        self,
        dialect: Dialect,
        f: Failure,
        message: str,
        request_id: str,
        param: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Reply:
        """A reply in ``dialect``'s error shape, with ``retry-after`` on a 429."""
        message = self._scrub(message)
        if dialect == "anthropic":
            body = anthropic.error_body(f.anthropic_type, message, dict(extra or {}))
            headers = [*_JSON, (b"request-id", request_id.encode())]
        else:
            body = openai.error_body(message, f.openai_type, f.code, param, extra or {})
            headers = [*_JSON, (b"x-request-id", request_id.encode())]
        headers.append((b"x-llm-router-request-id", request_id.encode()))
        if f.status == 429:
            headers.append((b"retry-after", retry_after_header(f.retry_after)))
        return Reply(f.status, headers, body)

    def internal_error(
        self, dialect: Dialect, exc: BaseException, request_id: str, inbound: Inbound | None
    ) -> Reply:
        """The 500 for an unexpected exception (a bug in the gateway, not the request's
        failure): logged at ERROR with its traceback (:meth:`log_internal`); the client
        learns only that it happened and the request id to look for."""
        self.log_internal(exc, request_id, inbound)
        return self.error_reply(
            dialect,
            _failure(500, "internal_error"),
            f"the gateway failed unexpectedly on request {request_id}; its log has the details",
            request_id,
        )

    def log_internal(self, exc: BaseException, request_id: str, inbound: Inbound | None) -> None:
        """Log an unexpected exception with its traceback, scrubbed: no upstream key (the
        router's scrubber) and no credential the client sent."""
        text = "".join(traceback.format_exception(exc))
        text = self._scrub(text)
        if inbound is not None:
            for name in ("authorization", "x-api-key"):
                value = inbound.headers.get(name)
                if value:
                    for form in (value, value.partition(" ")[2]):
                        if len(form) >= 8:
                            text = text.replace(form, "[redacted]")
        path = inbound.path[:100] if inbound is not None else "?"
        logger.error("gateway: unexpected error answering %s (%s):\n%s", request_id, path, text)

    def llm_error_reply(self, dialect: Dialect, exc: LLMError, request_id: str) -> Reply:
        """The reply for a router error: its status (:func:`failure`), message, attempts."""
        extra = {"attempts": _attempts(exc, self._scrub)} if exc.attempts else None
        return self.error_reply(dialect, failure(exc), str(exc), request_id, extra=extra)

    def _streamed(
        self,
        events: RouterStream,
        model: str,
        encoder: openai.ChunkEncoder | anthropic.EventEncoder,
        dialect: Dialect,
        deadline: float | None,
        request_id: str,
    ) -> Reply:
        """The reply of a committed stream: SSE headers (the dialect's request-id header,
        the router's headers), then the encoded events as the body."""
        id_header = b"x-request-id" if dialect == "openai" else b"request-id"
        headers = [
            *_SSE,
            (id_header, request_id.encode()),
            *_router_headers(
                request_id, events.provider, model.partition(":")[2], len(events.attempts)
            ),
        ]
        chunks = _Chunks(events, encoder, self, dialect, deadline, encoder.start(), request_id)
        return Reply(200, headers, chunks=chunks)

    def _answered(
        self,
        dialect: Dialect,
        request_id: str,
        response: ChatResponse | EmbeddingResponse,
        body: bytes,
    ) -> Reply:
        headers = [
            *_JSON,
            (b"x-request-id" if dialect == "openai" else b"request-id", request_id.encode()),
            *_router_headers(request_id, response.provider, response.model, len(response.attempts)),
        ]
        if response.cost is not None:
            headers.append((b"x-llm-router-cost", f"{response.cost:.10f}".encode()))
        return Reply(200, headers, body)

    # -- the router calls, through the caller's key's limits ----------------------------

    def _complete(self, caller: Caller, request: ChatRequest) -> Awaitable[ChatResponse]:
        """``router.complete``; with keys, admitted and settled by the caller's key."""
        keys = self.keys
        if keys is None:
            return self.router.complete(request)
        return self._keyed_complete(keys, keys.by_name[_key_name(caller)], request)

    async def _keyed_complete(
        self, keys: GatewayKeys, state: KeyState, request: ChatRequest
    ) -> ChatResponse:
        request = keys.prepare(state, request)
        ticket = await keys.admit(state, self.router, request.model, request=request)
        try:
            response = await self.router.complete(request)
        except LLMError as exc:
            ticket.settle(exc.attempts, None)
            raise
        except BaseException:
            ticket.settle(None, None)  # cancelled (deadline, disconnect): no trace
            raise
        ticket.settle(response.attempts, response.usage)
        return response

    async def _open_stream(
        self, caller: Caller, request: ChatRequest, stack: AsyncExitStack
    ) -> RouterStream:
        """``router.stream`` entered on ``stack``; with keys, admitted by the caller's
        key and settled when ``stack`` closes, after the stream has."""
        keys = self.keys
        if keys is None:
            return await stack.enter_async_context(self.router.stream(request))
        state = keys.by_name[_key_name(caller)]
        request = keys.prepare(state, request)
        ticket = await keys.admit(
            state, self.router, request.model, request=request, streaming=True
        )
        opened: list[RouterStream] = []

        def settle() -> None:  # runs after the stream closed (the stack is LIFO)
            if opened:
                events = opened[0]
                done = events.response
                ticket.settle(events.attempts, None if done is None else done.usage)
            else:
                ticket.settle(None, None)

        stack.callback(settle)
        try:
            events = await stack.enter_async_context(self.router.stream(request))
        except LLMError as exc:
            ticket.settle(exc.attempts, None)
            raise
        opened.append(events)
        return events

    def _embed(
        self, caller: Caller, model: str, inputs: list[str], dimensions: int | None
    ) -> Awaitable[EmbeddingResponse]:
        """``router.embed``; with keys, admitted and settled by the caller's key."""
        keys = self.keys
        if keys is None:
            return self.router.embed(model, inputs, dimensions=dimensions)
        return self._keyed_embed(keys, keys.by_name[_key_name(caller)], model, inputs, dimensions)

    async def _keyed_embed(
        self,
        keys: GatewayKeys,
        state: KeyState,
        model: str,
        inputs: list[str],
        dimensions: int | None,
    ) -> EmbeddingResponse:
        ticket = await keys.admit(state, self.router, model, inputs=inputs)
        try:
            response = await self.router.embed(model, inputs, dimensions=dimensions)
        except LLMError as exc:
            ticket.settle(exc.attempts, None)
            raise
        except BaseException:
            ticket.settle(None, None)
            raise
        ticket.settle(response.attempts, response.usage)
        return response

    # -- the endpoints -----------------------------------------------------------------

    async def chat_completions(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``POST /v1/chat/completions``: OpenAI's Chat Completions, JSON or SSE."""
        call = openai.decode_chat(inbound.body, request_id=request_id)
        completion_id = f"chatcmpl-{request_id}"
        if not call.stream:
            response = await self._complete(caller, call.request)
            body = openai.encode_completion(response, completion_id)
            return self._answered("openai", request_id, response, body)
        events = await self._open_stream(caller, call.request, stack)
        model = _stream_model(events)
        encoder = openai.ChunkEncoder(completion_id, model, include_usage=call.include_usage)
        return self._streamed(events, model, encoder, "openai", deadline, request_id)

    async def messages(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``POST /v1/messages``: Anthropic's Messages API, JSON or SSE."""
        call = anthropic.decode_messages(inbound.body, request_id=request_id)
        message_id = f"msg_{request_id}"
        if not call.stream:
            response = await self._complete(caller, call.request)
            body = anthropic.encode_message(response, message_id)
            return self._answered("anthropic", request_id, response, body)
        events = await self._open_stream(caller, call.request, stack)
        model = _stream_model(events)
        encoder = anthropic.EventEncoder(message_id, model)
        return self._streamed(events, model, encoder, "anthropic", deadline, request_id)

    async def embeddings(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``POST /v1/embeddings``: OpenAI's embeddings (float vectors)."""
        call = openai.decode_embeddings(inbound.body)
        response = await self._embed(caller, call.model, call.inputs, call.dimensions)
        return self._answered(
            "openai",
            request_id,
            response,
            openai.encode_embeddings(response, as_base64=call.base64),
        )

    async def models(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``GET /v1/models``: the routes, then every ``provider:model`` target.

        In Anthropic's shape when the request carries ``anthropic-version`` (as
        Anthropic's SDK sends), else in OpenAI's.
        """
        await trio.lowlevel.checkpoint()
        anthropic_shape = "anthropic-version" in inbound.headers
        lists = self._key_models.get(caller.key)
        if lists is None:
            body = self._anthropic_models if anthropic_shape else self._openai_models
        else:  # only what the key may use
            body = lists[1] if anthropic_shape else lists[0]
        return Reply(200, [*_JSON, (b"x-llm-router-request-id", request_id.encode())], body)

    async def healthz(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``GET /healthz``: the process answers (liveness)."""
        await trio.lowlevel.checkpoint()
        return Reply(200, list(_JSON), b'{"status":"ok"}')

    async def readyz(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``GET /readyz``: 200 while at least one provider is not unhealthy, else 503.

        It is open, also with gateway keys; there, only a caller with a key is told the
        providers' names and health (the others learn ready or not, nothing more).
        """
        await trio.lowlevel.checkpoint()
        health = {name: h.status for name, h in self.router.health().items()}
        ready = any(status != "unhealthy" for status in health.values())
        status = "ready" if ready else "unavailable"
        keys = self.keys
        if keys is not None:
            try:
                keys.identify(inbound.headers)
            except BadRequest:
                return Reply(
                    200 if ready else 503, list(_JSON), msgspec.json.encode({"status": status})
                )
        body = msgspec.json.encode({"status": status, "providers": health})
        return Reply(200 if ready else 503, list(_JSON), body)

    async def metrics(
        self,
        inbound: Inbound,
        caller: Caller,
        stack: AsyncExitStack,
        request_id: str,
        deadline: float | None,
    ) -> Reply:
        """``GET /metrics``: the router's Prometheus metrics (the ``prometheus`` extra)."""
        await trio.lowlevel.checkpoint()
        if self._metrics is None:
            raise BadRequest(
                "metrics are off: install the 'prometheus' extra "
                "(pip install 'trio-llm-router[prometheus]') and restart the gateway",
                status=404,
            )
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self._metrics)
        return Reply(200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body)


#: What a gateway with keys serves without one: liveness and readiness probes.
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _key_name(caller: Caller) -> str:
    """The key of a caller of a gateway with keys (only /healthz, /readyz have none)."""
    if caller.key is None:  # pragma: no cover - authenticate lets none through
        raise BadRequest("this endpoint needs a gateway key", status=401)
    return caller.key


_DEADLINE_PASSED = "the request's deadline (x-request-timeout) passed before it was answered"

_ROUTES: dict[str, tuple[str, Endpoint]] = {
    "/v1/chat/completions": ("POST", Gateway.chat_completions),
    "/v1/messages": ("POST", Gateway.messages),
    "/v1/embeddings": ("POST", Gateway.embeddings),
    "/v1/models": ("GET", Gateway.models),
    "/healthz": ("GET", Gateway.healthz),
    "/readyz": ("GET", Gateway.readyz),
    "/metrics": ("GET", Gateway.metrics),
}


def _router_headers(request_id: str, provider: str, model: str, attempts: int) -> Headers:
    return [
        (b"x-llm-router-request-id", request_id.encode()),
        (b"x-llm-router-provider", provider.encode()),
        (b"x-llm-router-model", model.encode()),
        (b"x-llm-router-attempts", str(attempts).encode()),
    ]


def _stream_model(events: RouterStream) -> str:
    """``provider:model`` of a committed stream: its winning attempt's."""
    for attempt in reversed(events.attempts):
        if attempt.provider == events.provider and attempt.outcome == "won":
            return f"{attempt.provider}:{attempt.model}"
    for attempt in reversed(events.attempts):
        if attempt.provider == events.provider:
            return f"{attempt.provider}:{attempt.model}"
    return f"{events.provider}:"


def _model_lists(
    config: RouterConfig, allowed: Callable[[str], bool] | None = None
) -> tuple[bytes, bytes]:
    """The ``/v1/models`` bodies, OpenAI's and Anthropic's, built once (with
    ``allowed``: only the ids it allows, for one gateway key)."""
    ids = [(alias, "llm-router") for alias in config.routes]
    ids += [(row.target, row.target.partition(":")[0]) for row in model_rows(config)]
    if allowed is not None:
        ids = [(i, owner) for i, owner in ids if allowed(i)]
    openai_body = msgspec.json.encode(
        {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": 0, "owned_by": owner} for i, owner in ids
            ],
        }
    )
    data = [
        {"type": "model", "id": i, "display_name": i, "created_at": "1970-01-01T00:00:00Z"}
        for i, _ in ids
    ]
    anthropic_body = msgspec.json.encode(
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )
    return openai_body, anthropic_body


class _Chunks:
    """A committed stream's events, encoded: the SSE body of a streaming reply.

    A failure after the first byte ends the body with the dialect's error event (and
    no terminator); so does the deadline.  Reading is cancelled like any read: by the
    client's disconnect, through the ASGI app.
    """

    __slots__ = (
        "_deadline",
        "_dialect",
        "_encoder",
        "_events",
        "_finished",
        "_gateway",
        "_head",
        "_request_id",
    )

    def __init__(
        self,
        events: RouterStream,
        encoder: openai.ChunkEncoder | anthropic.EventEncoder,
        gateway: Gateway,
        dialect: Dialect,
        deadline: float | None,
        head: bytes,
        request_id: str,
    ) -> None:
        self._request_id = request_id
        self._events = events
        self._encoder = encoder
        self._gateway = gateway
        self._dialect = dialect
        self._deadline = deadline
        self._head: bytes | None = head
        self._finished = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        head = self._head
        if head is not None:
            self._head = None
            return head
        if self._finished:
            raise StopAsyncIteration
        encoder = self._encoder
        while True:
            try:
                event = await self._next()
            except StopAsyncIteration:
                self._finished = True
                if encoder.done:
                    raise
                return self._error(_failure(502), "the upstream stream ended before its end")
            except LLMError as exc:
                self._finished = True
                return self._error(failure(exc), str(exc))
            except Exception as exc:  # a bug of ours mid-stream: logged, an error event
                return self._internal(exc)
            if event is None:
                self._finished = True
                return self._error(_failure(504, "deadline_exceeded"), _DEADLINE_PASSED)
            try:
                data = encoder.event(event)
            except Exception as exc:
                return self._internal(exc)
            if encoder.done:
                self._finished = True
            if data:
                return data

    async def _next(self) -> StreamEvent | None:
        deadline = self._deadline
        if deadline is None:
            return await self._events.__anext__()
        with trio.move_on_at(deadline):
            return await self._events.__anext__()
        return None

    def _internal(self, exc: Exception) -> bytes:
        self._finished = True
        self._gateway.log_internal(exc, self._request_id, None)
        return self._error(
            _failure(500, "internal_error"),
            f"the gateway failed unexpectedly on request {self._request_id}; its log has "
            "the details",
        )

    def _error(self, f: Failure, message: str) -> bytes:
        message = self._gateway._scrub(message)
        if self._dialect == "anthropic":
            return anthropic.error_event(f.anthropic_type, message)
        return openai.sse_error(message, f.openai_type, f.code)


# --------------------------------------------------------------------------- ASGI


class GatewayApp:
    """The gateway as an ASGI application over one open router.

    Serve it with any ASGI server that runs on trio (``llm-router serve`` uses
    hypercorn's trio worker: :func:`router.gateway.serve_gateway`).  The router must
    stay open while the app serves.

    Example::

        async with open_router(config) as router:
            app = GatewayApp(router, config)
            await serve_gateway(app, host="127.0.0.1", port=4000)
    """

    def __init__(
        self,
        router: Router,
        config: RouterConfig,
        *,
        metrics_registry: CollectorRegistry | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.gateway = Gateway(router, config, metrics_registry=metrics_registry, secrets_=secrets)

    def __repr__(self) -> str:
        return f"<GatewayApp over {self.gateway.router!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except Exception as exc:
                # A bug outside Gateway.handle (which answers its own in the vendor's
                # shape): logged here; the server answers a bare 500 if nothing was sent.
                self.gateway.log_internal(exc, "a request", None)
                raise
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not spoken here
            await send({"type": "websocket.close", "code": 1003})

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        limit = gateway.settings.max_body_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        announced = headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            # Refused before a byte of it is read (and before hypercorn answers an
            # ``Expect: 100-continue`` with a 100, inviting the upload).
            reply = gateway.body_too_large(scope["path"], int(announced))
            assert reply is not None
            await _send_reply(send, reply)
            return
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if len(body) > limit:
            reply = gateway.body_too_large(scope["path"], len(body))
            assert reply is not None
            await _send_reply(send, reply)
            return
        # A body that came whole in its first piece (the usual case: its length is what
        # ``content-length`` announced) is not read further: the end-of-body message
        # still to come is left to the disconnect watcher below, which reads past it.
        if message.get("more_body", False) and not (
            announced is not None and announced.isdigit() and len(body) == int(announced)
        ):
            # The rest must come within ``body_timeout``: a client trickling it would
            # hold its connection and its task for ever.
            rest: bytes | int | None = None
            with trio.move_on_after(gateway.settings.body_timeout) as waited:
                rest = await _read_rest(receive, body, limit)
            if waited.cancelled_caught:
                await _send_reply(send, gateway.body_too_slow(scope["path"]))
                return
            if rest is None:  # the client went away
                return
            if isinstance(rest, int):
                reply = gateway.body_too_large(scope["path"], rest)
                assert reply is not None
                await _send_reply(send, reply)
                return
            body = rest
        client = scope.get("client")
        inbound = Inbound(
            scope["method"],
            scope["path"],
            headers,
            body,
            client[0] if client else None,
        )
        gateway.in_flight += 1
        try:
            async with trio.open_nursery() as nursery:
                # The client going away cancels the request at once: the router call, its
                # upstream exchange, the stream being written.
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                async with AsyncExitStack() as stack:
                    reply = await gateway.handle(inbound, stack)
                    await _send_reply(send, reply)
                nursery.cancel_scope.cancel()
        finally:
            gateway.in_flight -= 1


async def _read_rest(receive: Receive, first: bytes, limit: int) -> bytes | int | None:
    """The whole body, from its ``first`` piece on; its size so far when it passes
    ``limit``; ``None`` when the client disconnects."""
    parts = [first]
    size = len(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _send_reply(send: Send, reply: Reply) -> None:
    chunks = reply.chunks
    if chunks is None:
        # A whole body goes with its length: without one, HTTP/1.1 frames it chunked,
        # which costs a third write (the last chunk) and the client a third read.
        body = reply.body
        headers = reply.headers
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
