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

Two boundaries every adapter goes through, so that no adapter has to remember them:

- **Secrets.**  Every string that leaves an adapter passes one :class:`~providers.Scrubber`
  built from the adapter's secrets: the kept headers (and so every request id taken from
  them) are scrubbed as they are surfaced, and every :class:`LLMError` raised while
  sending, reading, decoding or translating an answer (:meth:`HTTPProvider._send_json`
  with its ``convert`` step, :meth:`HTTPProvider._open_stream`, :class:`HTTPEventStream`)
  is sealed on its way out (:func:`seal_error`: message, request id, headers), whatever
  code built it.  An answer's ``id`` and ``model`` (body fields that reach spans) are
  sealed the same way.
- **Size.**  Bodies are read incrementally, never with httpx's ``aread``: a whole answer
  may decode to at most ``max_response_bytes``, one stream event (SSE) or line (NDJSON)
  to at most ``max_event_bytes``; crossing a cap raises :class:`ResponseTooLarge` at once
  and closes the connection.  gzip and deflate bodies are inflated here, not by httpx,
  in steps of at most 64 KiB with a checkpoint between steps (httpx inflates a whole
  network chunk in one call: 64 KiB of a gzip bomb is 64 MB, a long stall of the event
  loop), so a bomb is refused after at most the cap's worth of work, in small slices.
  Requests ask for ``gzip, deflate`` only, and a body in any other coding is a
  :class:`ProtocolError`.
"""

from __future__ import annotations

import email.utils
import importlib.util
import logging
import re
import ssl
import weakref
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cached_property
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
    ResponseTooLarge,
    ServerError,
    StreamInterrupted,
    Timeout,
)
from ._secret import Scrubber, Secret
from ._sse import FrameTooLarge, NDJSONDecoder, SSEDecoder
from ._types import Capabilities, ChatResponse, Done, StreamEvent, is_content_event

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "HTTPEventStream",
    "HTTPProvider",
    "StreamTranslator",
    "default_client",
    "error_for_status",
    "parse_retry_after",
    "seal_error",
    "surface_headers",
]

logger = logging.getLogger("trio_llm_router.providers")

_SURFACED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
_SURFACED = frozenset(
    {"retry-after", "retry-after-ms", "x-should-retry", "x-request-id", "request-id"}
)
_SURFACED_BYTES = frozenset(name.encode() for name in _SURFACED)
_SURFACED_PREFIXES_BYTES = tuple(prefix.encode() for prefix in _SURFACED_PREFIXES)

#: Default cap on a whole answer's body, decoded (after gzip/deflate): 32 MiB.  The
#: largest honest answers (a long completion, a batch of embeddings) are a few MiB.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: Default cap on one stream event (SSE) or line (NDJSON), decoded: 8 MiB.  Token deltas
#: are tiny, but one Gemini event may carry a whole generated image in base64.
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024
#: An error body is read up to this much (the rest is cut, not refused): enough for any
#: vendor's error JSON, and the message quotes only its start.
_MAX_ERROR_BODY_BYTES = 256 * 1024
#: Inflated bytes per decompression step (one step takes well under a millisecond).
_INFLATE_STEP = 64 * 1024
#: What requests accept; the only codings :class:`_BodyReader` inflates.
_ACCEPT_ENCODING = "gzip, deflate"


_TLS_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def shared_tls_context(*, http2: bool) -> ssl.SSLContext:
    """The one verified TLS context every :func:`default_client` of this ``http2`` shares.

    Made once, on first use, as httpx makes its own (``httpx.create_ssl_context()``:
    certifi's CA bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``; ``CERT_REQUIRED`` and
    ``check_hostname``).  Each context loads the whole CA bundle (~0.9 MiB of RSS), so a
    context per client made 30 providers cost ~27 MiB.  One per ``http2`` value because
    httpcore sets the context's ALPN list (``h2`` or not) before each handshake: clients
    that share a context then always set the same list.
    """
    ctx = _TLS_CONTEXTS.get(http2)
    if ctx is None:
        ctx = _TLS_CONTEXTS[http2] = httpx.create_ssl_context(verify=True)
    return ctx


class _RequestBody(httpx.ByteStream):
    """A request body that httpcore may abandon half-sent without leaving garbage behind.

    httpx's own :class:`httpx.ByteStream` yields the body from an async generator, and
    httpcore iterates it with a bare ``async for``: when the body's write fails (the
    server reset the connection: httpcore swallows the ``WriteError`` and goes on to read
    the answer) or is cancelled (a hedge's loser, a deadline), the generator is left
    suspended, and trio reports it at garbage collection as a ``ResourceWarning`` ("Async
    generator ... was garbage collected before it had been exhausted").  This iterator
    is a plain object: nothing to finalize.  ``__aiter__`` rewinds it, so httpcore may
    send it again on a fresh connection.
    """

    __slots__ = ("_sent",)

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self._sent = False

    def __aiter__(self) -> _RequestBody:
        self._sent = False
        return self

    async def __anext__(self) -> bytes:
        if self._sent:
            raise StopAsyncIteration
        self._sent = True
        return self._stream


def default_client(*, http2: bool | None = None) -> httpx.AsyncClient:
    """The HTTP client an adapter makes when none is injected.

    Connection pooling on (20 keep-alive connections, 90 s expiry), TLS verification on
    (one verified context shared by every default client, :func:`shared_tls_context`),
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
        verify=shared_tls_context(http2=http2),
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=20, keepalive_expiry=90.0
        ),
        timeout=httpx.Timeout(connect=30.0, read=600.0, write=60.0, pool=None),
        follow_redirects=False,
    )


def surface_headers(
    headers: httpx.Headers | Mapping[str, str], scrub: Scrubber | None = None
) -> dict[str, str]:
    """The response headers the router learns from: retry, rate limit, request id.

    With ``scrub``, each kept value passes it (an upstream may echo the key in
    ``x-request-id``); adapters get their headers this way from :class:`HTTPProvider`.
    """
    out: dict[str, str] = {}
    if scrub is not None and not scrub.active:
        scrub = None  # no secrets: skip the calls
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
                if scrub is not None:
                    value = scrub(value)
                out[lname] = f"{out[lname]}, {value}" if lname in out else value
        return out
    for name, value in headers.items():
        lname = name.lower()
        if lname in _SURFACED or lname.startswith(_SURFACED_PREFIXES):
            out[lname] = value if scrub is None else scrub(value)
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


def map_transport_error(exc: httpx.HTTPError, *, provider: str) -> LLMError:
    """Map an httpx failure before content to our tree (timeouts, connection failures).

    The message quotes httpx's; the adapter's boundary scrubs it (:func:`seal_error`).
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"timed out talking to the provider ({detail})", provider=provider)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return ProtocolError(f"the provider broke the HTTP protocol ({detail})", provider=provider)
    if isinstance(exc, httpx.TransportError):
        return ConnectionFailed(f"connection failed ({detail})", provider=provider)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return InvalidRequest(f"bad provider URL ({detail})", provider=provider)
    return ConnectionFailed(f"HTTP failure ({detail})", provider=provider)


def seal_error(error: LLMError, scrub: Scrubber) -> LLMError:
    """Scrub every string ``error`` carries, in place, and return it.

    The message (and ``args``), ``request_id`` and ``headers``; then the same for an
    :class:`LLMError` it was raised from (a :class:`StreamInterrupted`'s cause).  Each
    adapter calls it once, where its errors leave it, so no mapping code has to.
    """
    if not scrub.active:
        return error
    seen: set[int] = set()
    current: BaseException | None = error
    while isinstance(current, LLMError) and id(current) not in seen:
        seen.add(id(current))
        message = scrub(current.message)
        if message != current.message:
            current.message = message
            current.args = (message,)
        if current.request_id:
            current.request_id = scrub(current.request_id)
        if current.headers:
            current.headers = scrub.mapping(current.headers)
        current = current.__cause__ or current.__context__
    return error


def _seal_response(response: ChatResponse, scrub: Scrubber) -> ChatResponse:
    """``response`` with its body-given ``id`` and ``model`` scrubbed (they reach spans)."""
    return msgspec.structs.replace(response, id=scrub(response.id), model=scrub(response.model))


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

#: Reads :meth:`_BodyReader.abandon` makes at most (each returns a chunk that was
#: buffered before the connection closed, until the closed connection raises).
_MAX_DRAIN_READS = 1000


class _Inflater:
    """Bounded inflation of one gzip or deflate body: at most ``_INFLATE_STEP`` per step.

    ``zlib``'s ``max_length`` keeps the input it did not use in ``unconsumed_tail``, so a
    step's work (and the memory it allocates) is bounded whatever the compression ratio.
    Like httpx, ``deflate`` is tried as zlib-wrapped first, then as raw deflate, and data
    after the end of the (first) gzip member is ignored.
    """

    __slots__ = ("_coding", "_decompressor", "_first", "_tail")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        wbits = zlib.MAX_WBITS | 16 if coding != "deflate" else zlib.MAX_WBITS
        self._decompressor = zlib.decompressobj(wbits)
        self._first = coding == "deflate"  # may still fall back to raw deflate
        self._tail = b""

    def feed(self, data: bytes) -> None:
        """Take the next compressed chunk (call only once :meth:`step` gave ``b""``)."""
        self._tail = data

    def step(self) -> bytes:
        """Up to ``_INFLATE_STEP`` inflated bytes; ``b""`` when it needs more input."""
        while self._tail and not self._decompressor.eof:
            try:
                out = self._decompressor.decompress(self._tail, _INFLATE_STEP)
            except zlib.error as exc:
                if not self._first:
                    raise self._error(exc) from exc
                self._decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
                out = b""
                self._first = False
                continue
            self._first = False
            self._tail = self._decompressor.unconsumed_tail
            if out:
                return out
        return b""

    def flush(self) -> bytes:
        """What is left at the end of the input (at most a window's worth)."""
        try:
            return self._decompressor.flush()
        except zlib.error as exc:  # pragma: no cover - zlib's flush does not fail
            raise self._error(exc) from exc

    def _error(self, exc: zlib.error) -> ProtocolError:
        return ProtocolError(f"the {self._coding} body does not decompress ({exc})")


class _BodyReader:
    """A response's decoded body, piece by piece, from ``aiter_raw``.

    An identity body comes as the network delivers it (no Python work per chunk).  A
    gzip or deflate body is inflated in steps of at most ``_INFLATE_STEP`` bytes with a
    checkpoint after each, so a decompression bomb never holds the event loop for more
    than one step.  An explicit iterator rather than an async generator, so that leaving
    early (a cap crossed, a cancelled caller) ends cleanly: :meth:`abandon`.
    """

    __slots__ = ("_inflater", "_raw", "_response", "_unsupported", "_whole")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._raw = response.aiter_raw()
        self._inflater: _Inflater | None = None
        self._unsupported: str | None = None
        # A response built in memory (``httpx.Response(content=...)`` from a
        # MockTransport) was read, and decoded, when it was made: hand that out.
        self._whole = response.content if response.is_stream_consumed else None
        coding = None if self._whole is not None else response.headers.get("content-encoding")
        if coding is not None:
            coding = coding.strip().lower()
            if coding in ("gzip", "x-gzip", "deflate"):
                self._inflater = _Inflater(coding)
            elif coding not in ("", "identity"):
                # Requests accept gzip and deflate only; anything else (br, zstd, several
                # codings) would be inflated by code that cannot be bounded here.
                self._unsupported = coding

    async def next(self) -> bytes | None:
        """The next decoded piece, or ``None`` at the end of the body."""
        inflater = self._inflater
        if inflater is None:
            if self._whole is not None:
                whole, self._whole = self._whole, b""
                return whole or None
            if self._unsupported is not None:
                raise ProtocolError(
                    f"the body's content-encoding {self._unsupported!r} is not supported"
                )
            try:
                return await self._raw.__anext__()
            except StopAsyncIteration:
                return None
        while True:
            piece = inflater.step()
            if piece:
                await trio.lowlevel.checkpoint()
                return piece
            try:
                raw = await self._raw.__anext__()
            except StopAsyncIteration:
                self._inflater = None  # the next call sees the end
                return inflater.flush() or None
            inflater.feed(raw)

    async def abandon(self) -> None:
        """Close the response and end the reader's generator chain, shielded and bounded.

        httpx and httpcore read a body through nested async generators.  One left
        suspended (we stopped reading early) is finalized by the garbage collector, and
        trio warns about each (``ResourceWarning``: "garbage collected before it had been
        exhausted") — closing the outer one does not close the inner ones.  With the
        connection closed, the next read raises (after at most what was already
        buffered), and that ends every generator in the chain.  Never waits.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            await self._response.aclose()
        # In a cancelled scope: the first read that would wait raises Cancelled (an
        # HTTP/2 stream, once closed, would never get data nor an error), and that
        # ends the chain as well as the closed connection's error does.
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(_MAX_DRAIN_READS):
                try:
                    await self._raw.__anext__()
                except (StopAsyncIteration, Exception):
                    return

    async def read(self, limit: int, *, cut: bool = False) -> bytes:
        """The whole body, refused (:class:`ResponseTooLarge`) past ``limit`` bytes.

        With ``cut``, a longer body is cut to ``limit`` bytes instead (error bodies).
        On any failure, or a cut, the response is abandoned before this returns.
        """
        parts: list[bytes] = []
        size = 0
        try:
            while (piece := await self.next()) is not None:
                size += len(piece)
                if size > limit:
                    if not cut:
                        raise ResponseTooLarge(
                            f"the response body is larger than max_response_bytes={limit}",
                            limit=limit,
                        )
                    parts.append(piece[: len(piece) - (size - limit)])
                    await self.abandon()
                    break
                parts.append(piece)
        except BaseException:
            await self.abandon()
            raise
        return parts[0] if len(parts) == 1 else b"".join(parts)


class HTTPEventStream:
    """Events from one streaming HTTP response; an explicit iterator, not an async generator.

    Reads the body in pieces (:class:`_BodyReader`), frames it (SSE or NDJSON, at most
    ``max_event_bytes`` per event or line), translates each item, and maps every
    failure: before the first content event a failure is the vendor's (or transport)
    error, so the router can fail over; after it, :class:`StreamInterrupted` from that
    error.  Every error and the final answer are sealed with the adapter's scrubber.
    """

    __slots__ = (
        "_content_seen",
        "_decoder",
        "_done",
        "_error",
        "_max_event_bytes",
        "_pending",
        "_provider",
        "_reader",
        "_scrub",
        "_translator",
    )

    def __init__(
        self,
        response: httpx.Response,
        translator: StreamTranslator,
        *,
        framing: str,
        provider: str,
        scrub: Scrubber,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._translator = translator
        self._decoder: SSEDecoder | NDJSONDecoder = (
            SSEDecoder(max_line_bytes=max_event_bytes)
            if framing == "sse"
            else NDJSONDecoder(max_line_bytes=max_event_bytes)
        )
        self._max_event_bytes = max_event_bytes
        self._pending: deque[StreamEvent] = deque()
        self._done = False
        self._error: LLMError | None = None
        self._content_seen = False
        self._provider = provider
        self._scrub = scrub
        self._reader = _BodyReader(response)

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
        """End the body reader once the response is closed (see :meth:`_BodyReader.abandon`)."""
        await self._reader.abandon()

    def _fail(self, exc: LLMError) -> None:
        if exc.provider is None:
            exc.provider = self._provider
        self._done = True
        self._error = seal_error(exc, self._scrub)

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
                chunk = await self._reader.next()
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, provider=self._provider) from exc
            if chunk is None:
                self._done = True
                self._feed_items(self._decoder.close())
                self._finish(self._translator.finish())
                return
            try:
                items = self._decoder.feed(chunk)
            except FrameTooLarge as exc:
                raise ResponseTooLarge(
                    f"a stream event is larger than max_event_bytes={self._max_event_bytes}",
                    limit=self._max_event_bytes,
                ) from exc
            except ValueError as exc:
                raise ProtocolError(str(exc)) from exc
            self._feed_items(items)
        except LLMError as exc:
            self._fail(exc)

    def _feed_items(self, items: list[Any]) -> None:
        translator = self._translator
        for item in items:
            if translator.terminated:
                return
            self._pending.extend(translator.feed(item))

    def _finish(self, events: list[StreamEvent]) -> None:
        if self._scrub and events and isinstance(events[-1], Done):
            done = events[-1]
            sealed = _seal_response(done.response, self._scrub)
            if sealed is not done.response:
                events[-1] = Done(response=sealed)
        self._pending.extend(events)


def _decoded(data: Any, headers: dict[str, str]) -> Any:
    return data


#: Extra request headers whose values are secrets (by name, as the audit log judges).
_SECRET_HEADER = re.compile(r"auth|key|token|secret", re.IGNORECASE)

#: The HTTP libraries' own loggers.  httpcore's DEBUG trace prints raw response headers,
#: and an upstream may echo the key in one (``x-request-id``); httpx's INFO line prints
#: the URL.  A logger's filters see only its own records, so each gets the filter.
_LIBRARY_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class _LibraryLogScrubber(logging.Filter):
    """Scrubs the keys of the live HTTP adapters from the HTTP libraries' log records.

    Installed on :data:`_LIBRARY_LOGGERS` when the first adapter with a key is built.  It
    costs nothing while those loggers are not enabled (the library checks the level
    before it builds a record) and one substring test per key and record when they are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.providers: weakref.WeakSet[HTTPProvider] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        providers = list(self.providers)
        if not providers:
            return True
        message = original = record.getMessage()
        for provider in providers:
            scrub = provider._scrub
            if scrub and scrub.found_in(message):
                message = scrub(message)
        if message is not original:
            record.msg, record.args = message, ()
        return True


_library_log_scrubber: _LibraryLogScrubber | None = None


def _scrub_library_logs(provider: HTTPProvider) -> None:
    """Have the HTTP libraries' log records scrubbed of ``provider``'s key."""
    global _library_log_scrubber
    if _library_log_scrubber is None:
        _library_log_scrubber = _LibraryLogScrubber()
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).addFilter(_library_log_scrubber)
    _library_log_scrubber.providers.add(provider)


class HTTPProvider:
    """Base of the HTTP adapters: holds the client, the key and the common flow.

    Subclasses set ``kind``, build bodies and headers, and implement ``_map_error``.

    ``max_response_bytes`` caps a whole answer's decoded body, ``max_event_bytes`` one
    stream event or line (defaults :data:`DEFAULT_MAX_RESPONSE_BYTES`,
    :data:`DEFAULT_MAX_EVENT_BYTES`); crossing either raises :class:`ResponseTooLarge`.
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
        max_response_bytes: int | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        self._name = name or self.kind
        if isinstance(api_key, str):
            api_key = Secret(api_key)
        self._api_key = api_key
        self._base_url = (base_url or self.default_base_url).rstrip("/")
        for field, value in (
            ("max_response_bytes", max_response_bytes),
            ("max_event_bytes", max_event_bytes),
        ):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{field} must be a positive number of bytes, got {value!r}")
        self._max_response_bytes = max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES
        self._max_event_bytes = max_event_bytes or DEFAULT_MAX_EVENT_BYTES
        self._owns_client = client is None
        self._client = client if client is not None else default_client()
        self._capabilities = capabilities or self.default_capabilities
        self._extra_headers = dict(headers or {})
        # A key sent in an extra header (a gateway's ``authorization``, ``x-api-key``) is
        # a secret too: the scrubber hides it as it hides the API key.
        self._header_secrets = [
            part
            for name, value in self._extra_headers.items()
            if _SECRET_HEADER.search(name)
            for part in {value, value.rpartition(" ")[2]}
            if len(part) >= 8  # not "basic" or a short mode word: keys are long
        ]
        # Only codings _BodyReader can inflate in bounded steps (httpx would also offer
        # br and zstd when their packages are installed); a configured header wins.
        self._base_headers = {"accept-encoding": _ACCEPT_ENCODING, **self._extra_headers}
        # The same without it, for a client that already asks for exactly those codings
        # (httpx's default without brotli or zstandard): merging a header the client
        # sends anyway costs httpx more than asking the client what it sends.
        self._plain_headers = dict(self._extra_headers)
        self._closed = False
        # Endpoint URLs parsed once: httpx parses a string URL on every request (about
        # 8 µs), and a provider sends to a handful of endpoints.
        self._urls: dict[str, httpx.URL] = {}
        if api_key or self._header_secrets:
            _scrub_library_logs(self)

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
        secrets = [self._api_key.reveal()] if self._api_key else []
        return secrets + self._header_secrets

    @cached_property
    def _scrub(self) -> Scrubber:
        """The one scrubber every string leaving this adapter passes (built on first use)."""
        return Scrubber(self._secrets)

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
        client = self._client
        base = (
            self._plain_headers
            if client.headers.get("accept-encoding") == _ACCEPT_ENCODING
            else self._base_headers
        )
        headers = {**base, **self._auth_headers()}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = msgspec.json.encode(body)
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _MAX_URLS:  # per-model endpoints (Gemini): stay bounded
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        request = client.build_request(
            method, parsed, content=content, headers=headers, params=params
        )
        if content is not None:
            request.stream = _RequestBody(content)
        return request

    async def _raise_for_status(self, response: httpx.Response, headers: dict[str, str]) -> None:
        """Read (the start of) an error body and raise the adapter's mapped error."""
        try:
            raw = await _BodyReader(response).read(_MAX_ERROR_BODY_BYTES, cut=True)
        except (httpx.HTTPError, LLMError):
            raw = b""
        raise self._map_error(response.status_code, headers, raw)

    async def _send_json(
        self,
        method: str,
        url: str,
        body: Any = None,
        decode: Callable[[bytes], Any] | None = None,
        convert: Callable[[Any, dict[str, str]], Any] = _decoded,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send a request, read the whole body (capped), map errors, decode and convert it.

        Returns ``convert(decoded, headers)`` (by default the decoded body), where
        ``headers`` are the kept response headers, scrubbed.  This is the boundary of a
        whole answer: any :class:`LLMError` raised in here, ``convert`` (the adapter's
        translation) included, is sealed with the adapter's scrubber on its way out.
        """
        request = self._request(method, url, body, params=params)
        scrub = self._scrub
        try:
            # Sent streaming (only the headers are read), then the body, capped.  The
            # client's send is awaited here, not through a helper: every resumption of
            # the exchange passes each coroutine frame between it and the event loop.
            try:
                response = await self._client.send(request, stream=True)
                headers = surface_headers(response.headers, scrub)
                if response.status_code >= 400:
                    await self._raise_for_status(response, headers)
                raw = await _BodyReader(response).read(self._max_response_bytes)
            except httpx.HTTPError as exc:
                raise map_transport_error(exc, provider=self._name) from exc
            if decode is not None:
                try:
                    raw = decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    raise ProtocolError(
                        f"could not parse the provider's response: {exc}",
                        status_code=response.status_code,
                        headers=headers,
                    ) from exc
            result = convert(raw, headers)
        except LLMError as exc:
            if exc.provider is None:
                exc.provider = self._name
            seal_error(exc, scrub)
            raise
        if (
            scrub.active
            and isinstance(result, ChatResponse)
            and scrub.found_in(f"{result.id}\n{result.model}")
        ):
            result = _seal_response(result, scrub)
        return result

    @asynccontextmanager
    async def _open_stream(
        self,
        url: str,
        body: Any,
        make_translator: Callable[[dict[str, str]], StreamTranslator],
        *,
        framing: str = "sse",
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[HTTPEventStream]:
        """Send a streaming request; yield its events; close the response on exit.

        ``make_translator`` gets the kept response headers, scrubbed.  Errors before the
        events are sealed here, the events' own by :class:`HTTPEventStream`.
        """
        request = self._request("POST", url, body, params=params)
        scrub = self._scrub
        events: HTTPEventStream | None = None
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            error = seal_error(map_transport_error(exc, provider=self._name), scrub)
            raise error from exc
        try:
            try:
                headers = surface_headers(response.headers, scrub)
                if response.status_code >= 400:
                    await self._raise_for_status(response, headers)
                translator = make_translator(headers)
            except LLMError as exc:
                if exc.provider is None:
                    exc.provider = self._name
                seal_error(exc, scrub)
                raise
            events = HTTPEventStream(
                response,
                translator,
                framing=framing,
                provider=self._name,
                scrub=scrub,
                max_event_bytes=self._max_event_bytes,
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
