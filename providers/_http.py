"""What every HTTP adapter shares: the client, headers, error mapping, the event stream.

An adapter supplies three vendor-specific pieces — how to build the request body, how
to map an HTTP error body to an :class:`LLMError` (one place per adapter), and a pure
stream translator — and this module does the rest: sending with httpx, surfacing the
retry and rate-limit headers, mapping transport failures, and turning the response's
bytes into typed events without an async generator.

Cancellation: every exchange runs in the caller's task.  A cancelled caller leaves the
``async with`` of :meth:`HTTPProvider.stream`, whose exit closes the response under a
shield, so the connection is closed (or returned to the pool) before the cancellation
propagates.
"""

from __future__ import annotations

import email.utils
import importlib.util
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import msgspec
import trio

from ._errors import (
    AuthenticationError,
    ConnectionFailed,
    ContextLengthExceeded,
    InvalidRequest,
    LLMError,
    ModelNotFound,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StreamInterrupted,
    Timeout,
    scrub,
)
from ._secret import Secret
from ._sse import NDJSONDecoder, SSEDecoder
from ._types import Capabilities, StreamEvent, is_content_event

__all__ = [
    "HTTPEventStream",
    "HTTPProvider",
    "StreamTranslator",
    "default_client",
    "error_for_status",
    "parse_retry_after",
    "surface_headers",
]

logger = logging.getLogger("trio_llm_router.providers")

_SURFACED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
_SURFACED = frozenset(
    {"retry-after", "retry-after-ms", "x-should-retry", "x-request-id", "request-id"}
)
_SURFACED_BYTES = frozenset(name.encode() for name in _SURFACED)
_SURFACED_PREFIXES_BYTES = tuple(prefix.encode() for prefix in _SURFACED_PREFIXES)


def default_client(*, http2: bool | None = None) -> httpx.AsyncClient:
    """The HTTP client an adapter makes when none is injected.

    Connection pooling on (20 keep-alive connections, 90 s expiry), TLS verification on,
    HTTP/2 when the ``h2`` extra is installed.  Timeouts are a safety net only: deadlines
    belong to the caller's cancel scopes.

    Example::

        client = default_client()
        provider = OpenAIProvider(api_key=key, client=client)
    """
    if http2 is None:
        http2 = importlib.util.find_spec("h2") is not None
    return httpx.AsyncClient(
        http2=http2,
        verify=True,
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=20, keepalive_expiry=90.0
        ),
        timeout=httpx.Timeout(connect=30.0, read=600.0, write=60.0, pool=None),
        follow_redirects=False,
    )


def surface_headers(headers: httpx.Headers | Mapping[str, str]) -> dict[str, str]:
    """The response headers the router learns from: retry, rate limit, request id."""
    out: dict[str, str] = {}
    if isinstance(headers, httpx.Headers):
        # On every answer: match the raw names and decode only what is kept (httpx's
        # items() decodes and joins every header first).  Repeated names are joined
        # with ", " as items() does.
        encoding = headers.encoding
        for key, raw in headers.raw:
            lkey = key.lower()
            if lkey in _SURFACED_BYTES or lkey.startswith(_SURFACED_PREFIXES_BYTES):
                lname = lkey.decode(encoding)
                value = raw.decode(encoding)
                out[lname] = f"{out[lname]}, {value}" if lname in out else value
        return out
    for name, value in headers.items():
        lname = name.lower()
        if lname in _SURFACED or lname.startswith(_SURFACED_PREFIXES):
            out[lname] = value
    return out


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, then ``retry-after`` (seconds or HTTP date).

    ``headers`` must have lower-case names (as :func:`surface_headers` gives).
    Unparseable or negative values are ignored.

    Example::

        >>> parse_retry_after({"retry-after-ms": "1500"})
        1.5
        >>> parse_retry_after({"retry-after": "20"})
        20.0
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0 and value == value:  # not NaN
            return value
    ra = headers.get("retry-after")
    if ra is None:
        return None
    ra = ra.strip()
    try:
        seconds = float(ra)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        # An absolute date can only be turned into a delay with the wall clock.
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if seconds >= 0 and seconds == seconds else None


def _should_retry(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str | None,
    headers: Mapping[str, str],
    code: str | None = None,
) -> LLMError:
    """The default error for an HTTP status; adapters refine it with the vendor's codes.

    ``headers`` are the surfaced headers; ``retry_after`` and ``x-should-retry`` are read
    from them.
    """
    kw: dict[str, Any] = {
        "provider": provider,
        "status_code": status,
        "request_id": headers.get("x-request-id") or headers.get("request-id"),
        "retry_after": parse_retry_after(headers),
        "headers": headers,
        "retryable": _should_retry(headers),
    }
    cls: type[LLMError]
    if code in {"insufficient_quota", "billing_error"}:
        cls = QuotaExceeded
    elif code in {"context_length_exceeded", "model_context_window_exceeded"}:
        return ContextLengthExceeded(message, **kw)
    elif status == 400 or status == 413 or status == 422:
        cls = InvalidRequest
    elif status == 401:
        cls = AuthenticationError
    elif status == 402:
        cls = QuotaExceeded
    elif status == 403:
        cls = PermissionDenied
    elif status == 404:
        cls = ModelNotFound if code in {"model_not_found", "DeploymentNotFound"} else NotFound
    elif status == 408:
        cls = Timeout
    elif status == 429:
        cls = RateLimited
    elif status in (503, 529):
        cls = Overloaded
    elif status == 409 or status >= 500:
        cls = ServerError
    else:
        cls = InvalidRequest
    return cls(message, **kw)


def map_transport_error(exc: httpx.HTTPError, *, provider: str, secrets: list[str]) -> LLMError:
    """Map an httpx failure before content to our tree (timeouts, connection failures)."""
    detail = scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secrets)
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"timed out talking to the provider ({detail})", provider=provider)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return ProtocolError(f"the provider broke the HTTP protocol ({detail})", provider=provider)
    if isinstance(exc, httpx.TransportError):
        return ConnectionFailed(f"connection failed ({detail})", provider=provider)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return InvalidRequest(f"bad provider URL ({detail})", provider=provider)
    return ConnectionFailed(f"HTTP failure ({detail})", provider=provider)


class StreamTranslator(Protocol):
    """Turns a vendor's decoded stream items into our events; pure and synchronous.

    ``feed`` takes one SSE event (or one NDJSON line) and returns zero or more events; it
    raises an :class:`LLMError` for an in-stream vendor error.  ``finish`` is called at end
    of stream and returns the last events, ending with :class:`Done`; it raises
    :class:`ProtocolError` if the stream ended before the vendor's terminator.
    """

    @property
    def terminated(self) -> bool:
        """Whether the vendor's terminator was seen (anything after it is ignored)."""
        ...

    def feed(self, item: Any) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


#: Parsed endpoint URLs an adapter keeps (see ``HTTPProvider._request``).
_MAX_URLS = 256

#: Reads :meth:`HTTPEventStream.finish_reading` makes at most (each returns a chunk that
#: was buffered before the connection closed, until the closed connection raises).
_MAX_DRAIN_READS = 1000


class HTTPEventStream:
    """Events from one streaming HTTP response; an explicit iterator, not an async generator.

    Reads the body in chunks, frames it (SSE or NDJSON), translates each item, and maps
    every failure: before the first content event a failure is the vendor's (or transport)
    error, so the router can fail over; after it, :class:`StreamInterrupted` from that
    error.
    """

    __slots__ = (
        "_bytes",
        "_content_seen",
        "_decoder",
        "_done",
        "_error",
        "_pending",
        "_provider",
        "_secrets",
        "_translator",
    )

    def __init__(
        self,
        response: httpx.Response,
        translator: StreamTranslator,
        *,
        framing: str,
        provider: str,
        secrets: list[str],
    ) -> None:
        self._bytes = response.aiter_bytes()
        self._translator = translator
        self._decoder: SSEDecoder | NDJSONDecoder = (
            SSEDecoder() if framing == "sse" else NDJSONDecoder()
        )
        self._pending: deque[StreamEvent] = deque()
        self._done = False
        self._error: LLMError | None = None
        self._content_seen = False
        self._provider = provider
        self._secrets = secrets

    def __aiter__(self) -> HTTPEventStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while not self._pending:
            if self._error is not None:
                raise self._failure()
            if self._done:
                raise StopAsyncIteration
            await self._pull()
        event = self._pending.popleft()
        if not self._content_seen and is_content_event(event):
            self._content_seen = True
        return event

    async def finish_reading(self) -> None:
        """Run the body reader to its end, once the response is closed.

        httpx and httpcore read a body through nested async generators.  One left
        suspended (the caller stopped reading early) is finalized by the garbage
        collector, and trio warns about each (``ResourceWarning``: "garbage collected
        before it had been exhausted") — closing the outer one does not close the inner
        ones.  With the connection closed, the next read raises (after at most what was
        already buffered), and that ends every generator in the chain.  Never waits.
        """
        # In a cancelled scope: the first read that would wait raises Cancelled (an
        # HTTP/2 stream, once closed, would never get data nor an error), and that
        # ends the chain as well as the closed connection's error does.
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(_MAX_DRAIN_READS):
                try:
                    await self._bytes.__anext__()
                except (StopAsyncIteration, Exception):
                    return

    def _failure(self) -> LLMError:
        # Events decoded before the failure were delivered first; what the caller has
        # seen decides whether this is the vendor's error or an interruption.
        error = self._error
        assert error is not None
        if not self._content_seen:
            return error
        interrupted = StreamInterrupted(
            f"the stream failed after content was delivered: {error}",
            provider=self._provider,
            status_code=error.status_code,
            request_id=error.request_id,
        )
        interrupted.__cause__ = error
        return interrupted

    async def _pull(self) -> None:
        try:
            try:
                chunk = await self._bytes.__anext__()
            except StopAsyncIteration:
                self._done = True
                self._feed_items(self._decoder.close())
                self._pending.extend(self._translator.finish())
                return
            except httpx.HTTPError as exc:
                raise map_transport_error(
                    exc, provider=self._provider, secrets=self._secrets
                ) from exc
            try:
                items = self._decoder.feed(chunk)
            except ValueError as exc:
                raise ProtocolError(str(exc), provider=self._provider) from exc
            self._feed_items(items)
        except LLMError as exc:
            self._done = True
            self._error = exc

    def _feed_items(self, items: list[Any]) -> None:
        translator = self._translator
        for item in items:
            if translator.terminated:
                return
            self._pending.extend(translator.feed(item))


class HTTPProvider:
    """Base of the HTTP adapters: holds the client, the key and the common flow.

    Subclasses set ``kind``, build bodies and headers, and implement ``_map_error``.
    """

    kind = "http"
    default_base_url = ""
    default_capabilities = Capabilities()

    def __init__(
        self,
        *,
        name: str | None = None,
        api_key: Secret | str | None = None,
        base_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        capabilities: Capabilities | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._name = name or self.kind
        if isinstance(api_key, str):
            api_key = Secret(api_key)
        self._api_key = api_key
        self._base_url = (base_url or self.default_base_url).rstrip("/")
        self._owns_client = client is None
        self._client = client if client is not None else default_client()
        self._capabilities = capabilities or self.default_capabilities
        self._extra_headers = dict(headers or {})
        self._closed = False
        # Endpoint URLs parsed once: httpx parses a string URL on every request (about
        # 8 µs), and a provider sends to a handful of endpoints.
        self._urls: dict[str, httpx.URL] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, base_url={self._base_url!r})"

    @property
    def name(self) -> str:
        """The configured provider name."""
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        """What this deployment can take."""
        return self._capabilities

    @property
    def base_url(self) -> str:
        """The base URL requests go to."""
        return self._base_url

    @property
    def _secrets(self) -> list[str]:
        return [self._api_key.reveal()] if self._api_key else []

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it."""
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    # -- to be provided by subclasses -------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        raise AttributeError("HTTP adapters must define _auth_headers")

    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        raise AttributeError("HTTP adapters must define _map_error")

    # -- shared flow ------------------------------------------------------------------

    def _request(
        self, method: str, url: str, body: Any = None, *, params: Mapping[str, str] | None = None
    ) -> httpx.Request:
        if self._closed:
            raise ConnectionFailed("the provider is closed", provider=self._name)
        headers = {**self._extra_headers, **self._auth_headers()}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = msgspec.json.encode(body)
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _MAX_URLS:  # per-model endpoints (Gemini): stay bounded
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return self._client.build_request(
            method, parsed, content=content, headers=headers, params=params
        )

    def _error_from_response(self, response: httpx.Response, body: bytes) -> LLMError:
        error = self._map_error(response.status_code, surface_headers(response.headers), body)
        # Vendors sometimes echo part of a key; never let ours through.
        safe = scrub(error.message, self._secrets)
        if safe != error.message:
            error.message = safe
            error.args = (safe,)
        return error

    async def _send_json(
        self,
        method: str,
        url: str,
        body: Any = None,
        decode: Callable[[bytes], Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> tuple[Any, httpx.Response]:
        """Send a request, read the whole body, map errors, and decode it."""
        request = self._request(method, url, body, params=params)
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider=self._name, secrets=self._secrets) from exc
        raw = response.content
        if response.status_code >= 400:
            raise self._error_from_response(response, raw)
        if decode is None:
            return raw, response
        try:
            return decode(raw), response
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise ProtocolError(
                f"could not parse the provider's response: {exc}",
                provider=self._name,
                status_code=response.status_code,
                headers=surface_headers(response.headers),
            ) from exc

    @asynccontextmanager
    async def _open_stream(
        self,
        url: str,
        body: Any,
        make_translator: Callable[[httpx.Response], StreamTranslator],
        *,
        framing: str = "sse",
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[HTTPEventStream]:
        """Send a streaming request; yield its events; close the response on exit."""
        request = self._request("POST", url, body, params=params)
        events: HTTPEventStream | None = None
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider=self._name, secrets=self._secrets) from exc
        try:
            if response.status_code >= 400:
                try:
                    raw = await response.aread()
                except httpx.HTTPError:
                    raw = b""
                raise self._error_from_response(response, raw)
            events = HTTPEventStream(
                response,
                make_translator(response),
                framing=framing,
                provider=self._name,
                secrets=self._secrets,
            )
            yield events
        finally:
            # Shielded, so a cancelled caller still closes the connection before leaving;
            # bounded, so a misbehaving transport cannot hold the caller forever.
            with trio.CancelScope(shield=True), trio.move_on_after(5.0):
                await response.aclose()
                if events is not None:
                    await events.finish_reading()


def decode_error_json(body: bytes) -> Any:
    """The error body as JSON, or ``None`` when it is not JSON."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None


def body_snippet(body: bytes, limit: int = 200) -> str:
    """A short printable excerpt of a body that is not the JSON we expected."""
    text = body[:limit].decode("utf-8", errors="replace").strip()
    return text or "(empty body)"
