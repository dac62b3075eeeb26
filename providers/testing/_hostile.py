"""A deliberately hostile loopback server: the faults a real network and a bad vendor inflict.

The fake upstream (:mod:`._server`) speaks every vendor's format faithfully and
scripts the faults vendors document.  This server speaks just enough of OpenAI's format
(``POST /{fault}/v1/chat/completions``, ``POST /{fault}/v1/embeddings``, JSON and SSE)
to carry the faults nobody documents: bodies that never end, bodies of 50 MiB, gzip
bombs, invalid UTF-8, and the client's own key echoed back in headers, error bodies and
malformed stream chunks.  The fault is the first path segment, so each fault is one
``base_url`` (:meth:`HostileServer.base_url`), i.e. one configured provider, and the
server's counters are per provider.

=============  ==========================================================================
fault          what the client gets
=============  ==========================================================================
``ok``         a normal answer (JSON, SSE stream, or embeddings)
``late``       a normal answer after 0.1 s (a slow primary for hedging)
``slow``       a normal answer after 0.3 s
``429``        429 with ``retry-after: 1``
``429-huge``   429 with ``retry-after: 86400``
``500``        500; ``503``, ``529`` likewise
``reset``      the request read, then the connection reset (RST)
``hang``       the request read, then nothing until the client leaves
``drip``       a 200 whose body comes 4 bytes every 50 ms (streams: the first
               event at once, then the rest so)
``truncate``   half the body (``content-length`` promises all), then close;
               streams: two chunks, then close without ``[DONE]``
``malformed``  a 200 whose JSON (or one SSE event) does not parse
``utf8``       a 200 whose body (or one SSE event) holds invalid UTF-8
``huge``       a 200 of 50 MiB of valid JSON (streams: one 50 MiB event)
``gzip``       ``content-encoding: gzip``: 260 KiB on the wire, 256 MiB of JSON inflated
``echo-id``    a normal answer whose ``x-request-id`` is the caller's key
``echo-error`` 401 whose error message quotes the caller's key
``echo-sse``   streams: one chunk, then a malformed chunk quoting the key;
               JSON: a malformed body quoting the key
=============  ==========================================================================

``accept_url`` is a second listener that accepts connections and never reads from them
("accept-then-hang").

Counters (:meth:`HostileServer.counts`): requests, their arrival times
(``trio.current_time()``), the most exchanges in progress at once, and client
disconnects.  An exchange is in progress from the end of its request until its answer is
written or the server sees its client go.  A client that cancels closes its socket
first and the server notices a moment later, so an arrival that would count above
``limits[fault]`` first waits up to :data:`SETTLE` seconds for closures the kernel has
already delivered; only then is it counted.
"""

from __future__ import annotations

import json
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import msgspec
import trio

__all__ = ["HOSTILE_FAULTS", "HostileCounts", "HostileServer", "open_hostile_server"]

HOSTILE_FAULTS = (
    "ok",
    "late",
    "slow",
    "429",
    "429-huge",
    "500",
    "503",
    "529",
    "reset",
    "hang",
    "drip",
    "truncate",
    "malformed",
    "utf8",
    "huge",
    "gzip",
    "echo-id",
    "echo-error",
    "echo-sse",
)

#: How long an arrival over a limit waits for closures already under way (seconds).
SETTLE = 0.05
HUGE_BYTES = 50 * 1024 * 1024
BOMB_BYTES = 256 * 1024 * 1024
_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024


class HostileCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one fault path's counters."""

    requests: int
    arrivals: list[float]
    max_concurrency: int
    in_progress: int
    disconnects: int


class _Path:
    __slots__ = ("active", "arrivals", "disconnects", "max_active", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.arrivals: list[float] = []
        self.active = 0
        self.max_active = 0
        self.disconnects = 0


_bomb_cache: dict[str, bytes] = {}


def _bomb(stream: bool) -> bytes:
    """256 MiB of valid JSON (or one SSE event), gzipped to ~1 MiB; built once.

    A full flush resets the compressor and ends on a byte boundary, so the deflate bytes
    of one 1 MiB block decode the same wherever they stand: the block is compressed
    once and its bytes repeated.  One gzip member, so every decoder inflates all of it.
    """
    key = "stream" if stream else "json"
    if key not in _bomb_cache:
        head, tail = _answer_parts(stream)
        block = b"a" * (1024 * 1024)
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        first = z.compress(head) + z.flush(zlib.Z_FULL_FLUSH)
        middle = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
        last = z.compress(tail) + z.flush()
        count = BOMB_BYTES // len(block)
        crc = zlib.crc32(head)
        for _ in range(count):
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(tail, crc)
        size = len(head) + count * len(block) + len(tail)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
        _bomb_cache[key] = header + first + middle * count + last + trailer
    return _bomb_cache[key]


def _answer_parts(stream: bool) -> tuple[bytes, bytes]:
    """The bytes around a long text: a chat completion, or one SSE chunk."""
    if stream:
        return (
            b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":'
            b'[{"index":0,"delta":{"content":"',
            b'"},"finish_reason":null}]}\n\n',
        )
    return (
        b'{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"',
        b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,'
        b'"total_tokens":2}}',
    )


def _completion(text: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    ).encode()


def _chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    body = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


_USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
)


def _stream_chunks() -> list[bytes]:
    return [
        _chunk("hostile"),
        _chunk(" answer"),
        _chunk(None, "stop"),
        _USAGE_CHUNK,
        b"data: [DONE]\n\n",
    ]


def _embeddings(n: int) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": [0.6, 0.8]} for i in range(n)]
    body = {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": n}}
    return json.dumps(body).encode()


def _error(status: int, message: str) -> bytes:
    kinds = {429: "rate_limit_exceeded", 401: "invalid_api_key"}
    return json.dumps(
        {"error": {"message": message, "type": kinds.get(status, "server_error"), "code": None}}
    ).encode()


_REASONS = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error"}


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _ClientGone(Exception):
    pass


class HostileServer:
    """The running server: its URLs and counters.  Get one from :func:`open_hostile_server`."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self.url = ""
        self.accept_url = ""
        self.limits = dict(limits or {})
        self._paths: dict[str, _Path] = {}
        self.open_connections = 0
        self.accepted_unread = 0

    def base_url(self, fault: str, tag: str = "") -> str:
        """The OpenAI-format base URL whose requests get ``fault``.

        A ``tag`` gives the same fault a path (and counters) of its own, ``fault~tag``,
        for a second provider with the same behaviour.
        """
        if fault == "accept-hang":
            return self.accept_url + "/v1"
        if fault not in HOSTILE_FAULTS:
            raise ValueError(f"unknown hostile fault {fault!r}; known: {HOSTILE_FAULTS}")
        return f"{self.url}/{fault}~{tag}/v1" if tag else f"{self.url}/{fault}/v1"

    def counts(self, path: str) -> HostileCounts:
        """A snapshot of the counters of ``path`` (a fault, or ``fault~tag``)."""
        p = self._paths.get(path) or _Path()
        return HostileCounts(
            requests=p.requests,
            arrivals=list(p.arrivals),
            max_concurrency=p.max_active,
            in_progress=p.active,
            disconnects=p.disconnects,
        )

    def faults_seen(self) -> list[str]:
        """The paths (``fault`` or ``fault~tag``) that received at least one request."""
        return sorted(self._paths)

    # -- the connection loop -----------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        buffer = bytearray()
        try:
            while True:
                request = await _read_request(stream, buffer)
                if request is None:
                    return
                keep = await self._exchange(stream, *request)
                if not keep:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientGone, ValueError):
            return
        finally:
            self.open_connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _exchange(
        self, stream: trio.SocketStream, path: str, headers: dict[str, str], body: bytes
    ) -> bool:
        parts = path.strip("/").split("/")
        segment = parts[0] if parts else ""
        fault = segment.partition("~")[0]
        if fault not in HOSTILE_FAULTS:
            await stream.send_all(_head(404, [("content-length", "0")]))
            return True
        counters = self._paths.setdefault(segment, _Path())
        counters.requests += 1
        counters.arrivals.append(trio.current_time())
        limit = self.limits.get(segment)
        if limit is not None and counters.active >= limit:
            await trio.sleep(SETTLE)  # let closures the kernel delivered be seen
        counters.active += 1
        counters.max_active = max(counters.max_active, counters.active)
        try:
            gone = trio.Event()
            keep = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_eof, stream, gone, nursery.cancel_scope)
                try:
                    keep = await self._answer(stream, fault, parts, headers, body)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone.set()
                nursery.cancel_scope.cancel()
            if gone.is_set():
                counters.disconnects += 1
                return False
            return keep
        finally:
            counters.active -= 1

    async def _answer(
        self,
        stream: trio.SocketStream,
        fault: str,
        parts: list[str],
        headers: dict[str, str],
        body: bytes,
    ) -> bool:
        try:
            decoded = json.loads(body) if body else {}
        except ValueError:
            decoded = {}
        is_stream = bool(isinstance(decoded, dict) and decoded.get("stream"))
        embed = parts[-1] == "embeddings"
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        send = stream.send_all

        if fault in ("429", "429-huge"):
            wait = "1" if fault == "429" else "86400"
            payload = _error(429, "Rate limit reached; slow down.")
            await send(
                _head(
                    429,
                    [
                        ("retry-after", wait),
                        ("content-type", "application/json"),
                        ("content-length", str(len(payload))),
                    ],
                )
                + payload
            )
            return True
        if fault in ("500", "503", "529"):
            payload = _error(int(fault), "The server had an error.")
            await send(
                _head(
                    int(fault),
                    [("content-type", "application/json"), ("content-length", str(len(payload)))],
                )
                + payload
            )
            return True
        if fault == "echo-error":
            payload = _error(401, f"Incorrect API key provided: {key}. Find yours elsewhere.")
            await send(
                _head(
                    401,
                    [
                        ("content-type", "application/json"),
                        ("x-request-id", key),
                        ("content-length", str(len(payload))),
                    ],
                )
                + payload
            )
            return True
        if fault == "reset":
            sock = stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if fault == "hang":
            await trio.sleep_forever()
        if fault == "late":
            await trio.sleep(0.1)
        if fault == "slow":
            await trio.sleep(0.3)

        ctype = "text/event-stream" if is_stream and not embed else "application/json"
        extra: list[tuple[str, str]] = [("content-type", ctype)]
        if fault == "echo-id":
            extra.append(("x-request-id", key))
        if embed:
            inputs = decoded.get("input", []) if isinstance(decoded, dict) else []
            n = len(inputs) if isinstance(inputs, list) else 1
            payload = _embeddings(n)
            chunks = [payload]
        elif is_stream:
            chunks = _stream_chunks()
        else:
            chunks = [_completion("hostile answer")]

        if fault == "malformed":
            chunks = (
                [b'{"id": "x", "choices": [{"message": ']
                if not is_stream
                else [chunks[0], b'data: {"choices": [{"delta": \n\n', *chunks[1:]]
            )
        elif fault == "echo-sse":
            bad = b'data: {"echo": "' + key.encode() + b'", "choices": [\n\n'
            chunks = [bad] if not is_stream else [chunks[0], bad, *chunks[1:]]
        elif fault == "utf8":
            if is_stream:
                chunks = [
                    chunks[0],
                    b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe'
                    b'\xc3"},"finish_reason":null}]}\n\n',
                    *chunks[1:],
                ]
            else:
                head, tail = _answer_parts(False)
                chunks = [head + b"bad \xff\xfe\xc3 bytes" + tail]
        elif fault == "huge":
            head, tail = _answer_parts(is_stream)
            block = b"a" * (1024 * 1024)
            chunks = [head] + [block] * (HUGE_BYTES // len(block)) + [tail]
            if is_stream:
                chunks.append(b"data: [DONE]\n\n")
        elif fault == "gzip":
            chunks = [_bomb(is_stream and not embed)]
            extra.append(("content-encoding", "gzip"))

        total = sum(len(c) for c in chunks)
        if is_stream and not embed and fault != "gzip":
            await send(_head(200, [*extra, ("transfer-encoding", "chunked")]))
            return await _send_chunked(stream, chunks, fault)
        await send(_head(200, [*extra, ("content-length", str(total))]))
        if fault == "truncate":
            data = b"".join(chunks)
            await send(data[: len(data) // 2])
            return False
        if fault == "drip":
            data = b"".join(chunks)
            for i in range(0, len(data), 4):
                await send(data[i : i + 4])
                await trio.sleep(0.05)
            return True
        for c in chunks:
            await send(c)
        return True


async def _send_chunked(stream: trio.SocketStream, chunks: list[bytes], fault: str) -> bool:
    for i, c in enumerate(chunks):
        if fault == "truncate" and i == 2:
            return False  # no terminator, no [DONE]: the connection just ends
        if fault == "drip" and i > 0:  # the first event whole, then the rest drips
            for j in range(0, len(c), 4):
                piece = c[j : j + 4]
                await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
                await trio.sleep(0.05)
            continue
        await stream.send_all(b"%x\r\n" % len(c))
        await stream.send_all(c)
        await stream.send_all(b"\r\n")
    await stream.send_all(b"0\r\n\r\n")
    return True


async def _watch_eof(stream: trio.SocketStream, gone: trio.Event, scope: trio.CancelScope) -> None:
    """End the exchange when the client closes its side (it sends nothing while waiting)."""
    try:
        data = await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        data = b""
    if not data:
        gone.set()
        scope.cancel()
    else:
        await trio.sleep_forever()  # pipelining: not spoken here; wait for the answer


async def _read_request(
    stream: trio.SocketStream, buffer: bytearray
) -> tuple[str, dict[str, str], bytes] | None:
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > _MAX_HEAD:
            raise ValueError("request head too long")
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        _method, path, _version = lines[0].split(" ", 2)
    except ValueError:
        raise ValueError("bad request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > _MAX_BODY:
        raise ValueError("request body too large")
    body = bytearray(rest)
    while len(body) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        body += data
    buffer[:] = body[length:]
    return path.partition("?")[0], headers, bytes(body[:length])


async def _hold(stream: trio.SocketStream, server: HostileServer) -> None:
    """Accept-then-hang: never read; wait for the client to give up."""
    server.accepted_unread += 1
    server.open_connections += 1
    try:
        # Never answer; read (and drop) only to notice when the client gives up.
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        server.open_connections -= 1
        with trio.CancelScope(shield=True):
            await stream.aclose()


@asynccontextmanager
async def open_hostile_server(
    limits: dict[str, int] | None = None, *, host: str = "127.0.0.1"
) -> AsyncIterator[HostileServer]:
    """Start a :class:`HostileServer` on loopback; stop it and close every connection on exit.

    ``limits`` maps a fault path to the concurrency its provider is configured with,
    for the settle rule above (the counts are kept for every path either way).

    Example::

        async with open_hostile_server() as server:
            provider = OpenAIProvider(api_key="sk-x", base_url=server.base_url("gzip"))
    """
    server = HostileServer(limits)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server._serve, 0, host=host))
        port = listeners[0].socket.getsockname()[1]
        server.url = f"http://{host}:{port}"

        async def hold(stream: trio.SocketStream) -> None:
            await _hold(stream, server)

        accept = await nursery.start(partial(trio.serve_tcp, hold, 0, host=host))
        server.accept_url = f"http://{host}:{accept[0].socket.getsockname()[1]}"
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
