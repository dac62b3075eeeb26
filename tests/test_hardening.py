"""Hostile upstreams over real loopback sockets: key echoes, huge answers, gzip bombs.

A tiny trio HTTP/1.1 server (one scripted answer per connection, then close) plays an
upstream that echoes the API key everywhere it can — ``x-request-id``, other kept
headers, the error body, a malformed SSE chunk, an NDJSON line, the answer's id — or
that answers far too much.  Every adapter kind is driven against it directly and through
the router (events to a listener, every log record at DEBUG).
"""

from __future__ import annotations

import gzip
import logging
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import trio
import trio.lowlevel
from hypothesis import assume, given
from hypothesis import strategies as st

from providers import (
    AnthropicProvider,
    ChatRequest,
    GeminiProvider,
    LLMError,
    Message,
    OllamaProvider,
    OpenAIProvider,
    OpenRouterProvider,
    ProtocolError,
    Secret,
    ServerError,
)
from providers._errors import ResponseTooLarge
from providers._http import HTTPProvider
from providers._secret import Scrubber
from router import open_router
from router.config import ProviderConfig, RetryConfig, RouterConfig

KEY = "sk-hostile-7Qe2Lz9XwV4pT1sK8mN3bR6y"
KINDS = ["openai", "anthropic", "gemini", "ollama", "openrouter"]
CLASSES: dict[str, type[HTTPProvider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "ollama": OllamaProvider,
    "openrouter": OpenRouterProvider,
}
MiB = 1024 * 1024

Respond = Callable[[trio.SocketStream], Awaitable[None]]


# --------------------------------------------------------------------------- the server


async def _read_request(stream: trio.SocketStream) -> bytes:
    """Read one request (head and a content-length body); return the head."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


def head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Respond:
    """A fixed answer."""

    async def respond(stream: trio.SocketStream) -> None:
        await stream.send_all(head(status, headers or {}, len(body)) + body)

    return respond


def big_answer(total: int, headers: dict[str, str], piece: bytes = b" " * MiB) -> Respond:
    """``total`` bytes of body, written a piece at a time (never held whole)."""

    async def respond(stream: trio.SocketStream) -> None:
        await stream.send_all(head(200, headers, total))
        sent = 0
        while sent < total:
            part = piece[: total - sent]
            await stream.send_all(part)
            sent += len(part)

    return respond


@asynccontextmanager
async def hostile(respond: Respond) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server answering every request with ``respond``; yields (url, heads)."""
    heads: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        try:
            heads.append(await _read_request(stream))
            await respond(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up: what a refused answer looks like from here
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}", heads
        nursery.cancel_scope.cancel()


def adapter(kind: str, url: str, client: httpx.AsyncClient, **kw: Any) -> HTTPProvider:
    return CLASSES[kind](name=kind, api_key=Secret(KEY), base_url=url, client=client, **kw)


def req() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user("hi")])


# --------------------------------------------------------------------------- what leaks


def fragments() -> list[str]:
    """The key, its percent-encoded form, and a 12-character start of it."""
    return [KEY, KEY[:12]]


def texts(thing: Any, seen: set[int] | None = None) -> list[str]:
    """Every string ``thing`` shows: str, repr, JSON of structs, an error's fields and chain."""
    seen = set() if seen is None else seen
    if id(thing) in seen:
        return []
    seen.add(id(thing))
    out = [str(thing), repr(thing)]
    if isinstance(thing, msgspec.Struct):
        out.append(msgspec.json.encode(thing, enc_hook=repr).decode())
    if isinstance(thing, BaseException):
        if isinstance(thing, BaseExceptionGroup):
            for inner in thing.exceptions:
                out += texts(inner, seen)
        if isinstance(thing, LLMError):
            out += [repr(thing.headers), repr(thing.request_id), thing.message]
            for inner in getattr(thing, "errors", ()):
                out += texts(inner, seen)
        for attempt in getattr(thing, "attempts", ()):
            out += texts(attempt, seen)
        for linked in (thing.__cause__, thing.__context__):
            if isinstance(linked, LLMError):
                out += texts(linked, seen)
    return out


def assert_no_key(*things: Any) -> None:
    for thing in things:
        for text in texts(thing):
            for fragment in fragments():
                assert fragment not in text, f"the key leaked into {text[:300]!r}"


def ours(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every log record, as text: the library's own (``trio_llm_router.*``) and the HTTP
    libraries' (httpcore's DEBUG trace prints raw response headers; the adapters filter
    those loggers)."""
    return [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records]


ECHO = {"x-request-id": KEY, "request-id": KEY, "x-ratelimit-remaining-requests": KEY}


def error_body(kind: str) -> bytes:
    """A 500 in ``kind``'s error shape whose message (and request id) echo the key."""
    message = f"upstream failed for key {KEY}"
    if kind == "anthropic":
        body: Any = {
            "type": "error",
            "error": {"type": "api_error", "message": message},
            "request_id": KEY,
        }
    elif kind == "gemini":
        body = {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
    elif kind == "ollama":
        body = {"error": message}
    else:
        body = {"error": {"message": message, "type": "server_error", "code": "boom"}}
    return msgspec.json.encode(body)


def success_body(kind: str) -> bytes:
    """A valid answer whose id echoes the key."""
    if kind == "anthropic":
        body: Any = {
            "id": KEY,
            "type": "message",
            "model": "m",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    elif kind == "gemini":
        body = {
            "responseId": KEY,
            "candidates": [
                {
                    "index": 0,
                    "content": {"role": "model", "parts": [{"text": "hi"}]},
                    "finishReason": "STOP",
                }
            ],
        }
    elif kind == "ollama":
        body = {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True}
    else:
        body = {
            "id": KEY,
            "model": "m",
            "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        }
    return msgspec.json.encode(body)


def malformed_stream(kind: str) -> bytes:
    """A stream whose first item is broken JSON quoting the key where the quote is cut."""
    # The adapters quote 120 characters of a bad chunk: the key starts at 104, so a quote
    # cut before scrubbing would keep its first 16 characters.
    bad = '{"oops": "' + "x" * 94 + KEY + '" trailing garbage'
    if kind == "ollama":
        return bad.encode() + b"\n"
    if kind == "anthropic":
        return f"event: message_start\ndata: {bad}\n\n".encode()
    return f"data: {bad}\n\n".encode()


# --------------------------------------------------------------------------- item 4


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_echoing_the_key_shows_it_nowhere(
    kind: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 echoing the key in its body, request id and rate-limit headers: the error's
    message, str, repr, request_id and headers, and every log record, are free of it."""
    caplog.set_level(logging.DEBUG)
    async with hostile(answer(500, error_body(kind), ECHO)) as (url, _):
        with pytest.raises(LLMError) as complete_error:
            await adapter(kind, url, client).complete(req())
        with pytest.raises(LLMError) as stream_error:
            async with adapter(kind, url, client).stream(req()) as events:
                async for _ in events:
                    pass
    for info in (complete_error, stream_error):
        assert isinstance(info.value, ServerError)
        assert info.value.request_id in (None, "***")
        assert_no_key(info.value)
    assert_no_key(*ours(caplog))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_malformed_stream_chunk_quoting_the_key_is_scrubbed(
    kind: str, client: httpx.AsyncClient
) -> None:
    """A broken SSE chunk (NDJSON line for Ollama) that contains the key, where the
    adapter's 120-character quote cuts it, gives a ProtocolError without any of it."""
    async with hostile(answer(200, malformed_stream(kind), ECHO)) as (url, _):
        with pytest.raises(ProtocolError) as info:
            async with adapter(kind, url, client).stream(req()) as events:
                async for _ in events:
                    pass
    assert "oops" in str(info.value)  # the quote is still there, minus the key
    assert_no_key(info.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_answer_echoing_the_key_in_headers_and_id_is_scrubbed(
    kind: str, client: httpx.AsyncClient
) -> None:
    """A good answer whose id, x-request-id and rate-limit headers echo the key: the
    ChatResponse keeps the headers (scrubbed), and shows the key nowhere."""
    async with hostile(answer(200, success_body(kind), ECHO)) as (url, _):
        response = await adapter(kind, url, client).complete(req())
    assert response.text == "hi"
    assert response.headers["x-request-id"] == "***"
    assert_no_key(response)


async def test_through_the_router_no_event_or_log_shows_the_key(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind behind one router, every upstream echoing the key in errors, request ids
    and bad chunks: no event a listener sees, no error, no log record shows it."""
    caplog.set_level(logging.DEBUG)
    seen: list[Any] = []
    for kind in KINDS:
        for respond in (
            answer(500, error_body(kind), ECHO),
            answer(200, malformed_stream(kind), ECHO),
        ):
            async with hostile(respond) as (url, _):
                config = RouterConfig(
                    providers={
                        kind: ProviderConfig(kind="openai", retry=RetryConfig(max_attempts=1))
                    }
                )
                providers = {kind: adapter(kind, url, client)}
                async with open_router(config, providers=providers) as router:
                    router.add_listener(seen.append)
                    with pytest.raises(LLMError) as info:
                        await router.complete(
                            ChatRequest(model=f"{kind}:m", messages=req().messages)
                        )
                    seen.append(info.value)
                    with pytest.raises(LLMError) as info:
                        async with router.stream(
                            ChatRequest(model=f"{kind}:m", messages=req().messages)
                        ) as events:
                            async for _ in events:
                                pass
                    seen.append(info.value)
    assert len(seen) > 4 * len(KINDS)
    assert_no_key(*seen)
    assert_no_key(*ours(caplog))


@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    cut=st.integers(min_value=8, max_value=len(KEY) + 9),
    encoded=st.booleans(),
)
def test_the_scrubber_hides_the_key_whole_encoded_or_cut(
    before: str, after: str, cut: int, encoded: bool
) -> None:
    """Invariant: around any text, the key (raw or percent-encoded) or any start of it of
    8+ characters is scrubbed to ``***``, and text holding no probe comes back unchanged."""
    secret = KEY + "/+="
    scrub = Scrubber([Secret(secret)])
    assume(not scrub.found_in(before) and not scrub.found_in(after))
    form = quote(secret, safe="") if encoded else secret
    shown = form[:cut]
    # Text that goes on with the key's next characters makes a longer start of it,
    # which is scrubbed whole: that case is not the one this property states.
    assume(not after or not form.startswith(shown + after[0]))
    out = scrub(before + shown + after)
    assert out == before + "***" + after
    assert scrub(before) == before


# --------------------------------------------------------------------------- item 5


def peak_during(fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[tuple[Any, int]]]:
    async def run() -> tuple[Any, int]:
        tracemalloc.start()
        try:
            try:
                result: Any = await fn()
            except LLMError as exc:
                result = exc
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return run


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_50_mb_answer_is_refused_while_reading(
    kind: str, client: httpx.AsyncClient
) -> None:
    """A 50 MB JSON answer crosses the default 32 MiB cap: ResponseTooLarge (not retryable),
    raised while reading, with the peak of traced memory under 48 MiB (the old code kept
    the whole body and its join: over 100 MB)."""
    async with hostile(big_answer(50 * MiB, {"content-type": "application/json"})) as (url, _):
        error, peak = await peak_during(lambda: adapter(kind, url, client).complete(req()))()
    assert isinstance(error, ResponseTooLarge)
    assert error.limit == 32 * MiB
    assert not error.retryable
    assert error.provider == kind
    assert peak < 48 * MiB


def gzip_bomb(size: int = 105 * MiB) -> bytes:
    """About 100 KB of gzip that inflates to ``size`` bytes of spaces."""
    out = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b" " * MiB
    parts = [out.compress(block) for _ in range(size // MiB)]
    parts.append(out.flush())
    return b"".join(parts)


async def max_tick_gap(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """Run ``work`` beside a task that sleeps 0 in a loop; the longest wall-clock gap
    between two of its ticks (how long the event loop was held by someone else)."""
    gaps = [0.0]
    result: list[Any] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        try:
            result.append(await work())
        except LLMError as exc:
            result.append(exc)
        nursery.cancel_scope.cancel()
    return result[0], gaps[0]


async def test_a_gzip_bomb_is_refused_without_holding_the_loop(
    client: httpx.AsyncClient,
) -> None:
    """~100 KB of gzip inflating to 105 MB: ResponseTooLarge at the 32 MiB cap, and the
    event loop is never held for more than 50 ms.

    Wall time is the quantity under test here (and only here): a concurrent ticker
    measures the longest stretch the loop could not run it.  One bounded inflation step
    takes well under a millisecond; httpx inflated a whole 64 KiB network chunk (64 MB)
    in one call, ~100 ms.  50 ms leaves room for a loaded machine.
    """
    bomb = gzip_bomb()
    assert len(bomb) < 200_000
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    async with hostile(answer(200, bomb, headers)) as (url, _):
        provider = adapter("openai", url, client)
        error, gap = await max_tick_gap(lambda: provider.complete(req()))
        assert isinstance(error, ResponseTooLarge), error
        assert gap < 0.050
        error, peak = await peak_during(lambda: provider.complete(req()))()
    assert isinstance(error, ResponseTooLarge)
    assert peak < 48 * MiB


async def test_a_gzip_bomb_in_a_stream_is_refused_per_event(client: httpx.AsyncClient) -> None:
    """A gzip SSE stream whose one event inflates without end: ResponseTooLarge at the
    event cap (here 1 MiB), without holding the loop for 50 ms (wall time, see above)."""
    body = gzip.compress(b"data: " + b"x" * (60 * MiB), 9)
    headers = {"content-encoding": "gzip", "content-type": "text/event-stream"}

    async def run() -> Any:
        async with adapter("openai", url, client, max_event_bytes=MiB).stream(req()) as events:
            return [e async for e in events]

    async with hostile(answer(200, body, headers)) as (url, _):
        error, gap = await max_tick_gap(run)
    assert isinstance(error, ResponseTooLarge)
    assert error.limit == MiB
    assert gap < 0.050


async def test_a_compressed_answer_still_decodes(client: httpx.AsyncClient) -> None:
    """Ordinary gzip and deflate answers decode as before (the bounded inflater is exact),
    and requests ask for gzip and deflate only."""
    plain = success_body("openai")
    for coding, body in (
        ("gzip", gzip.compress(plain)),
        ("deflate", zlib.compress(plain)),
        ("deflate", zlib.compress(plain)[2:-4]),  # raw deflate, as some servers send
    ):
        async with hostile(answer(200, body, {"content-encoding": coding})) as (url, heads):
            response = await adapter("openai", url, client).complete(req())
        assert response.text == "hi"
        assert b"accept-encoding: gzip, deflate" in heads[0].lower()


async def test_requests_ask_for_gzip_and_deflate_whatever_the_client_sends() -> None:
    """Requests carry exactly one ``accept-encoding: gzip, deflate`` whether the client
    already asks for that (the header is then not merged again) or for more (``br``, set
    on a shared client after the adapter was made), and the answer decodes either way."""
    body = gzip.compress(success_body("openai"))
    for client_asks in ("gzip, deflate", "gzip, deflate, br", None):
        async with (
            httpx.AsyncClient() as client,
            hostile(answer(200, body, {"content-encoding": "gzip"})) as (url, heads),
        ):
            provider = adapter("openai", url, client)
            if client_asks is None:
                del client.headers["accept-encoding"]
            else:
                client.headers["accept-encoding"] = client_asks
            response = await provider.complete(req())
        assert response.text == "hi"
        lines = [line for line in heads[0].lower().split(b"\r\n") if b"accept-encoding" in line]
        assert lines == [b"accept-encoding: gzip, deflate"], client_asks


async def test_a_client_that_asks_for_gzip_and_deflate_gets_no_header_merged(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hot path: with a client that already sends ``accept-encoding: gzip, deflate``
    (httpx's default here), the adapter does not hand httpx that header to merge again
    per request (the merge was most of the cost this round added over loopback); a
    configured header still goes to every request."""
    assert client.headers["accept-encoding"] == "gzip, deflate"
    given: list[dict[str, str]] = []
    build = client.build_request

    def spy(*args: Any, **kw: Any) -> httpx.Request:
        given.append(dict(kw["headers"]))
        return build(*args, **kw)

    monkeypatch.setattr(client, "build_request", spy)
    async with hostile(answer(200, success_body("openai"))) as (url, heads):
        await adapter("openai", url, client).complete(req())
        await adapter("openai", url, client, headers={"x-team": "a"}).complete(req())
    assert [sorted(h) for h in given] == [
        ["authorization", "content-type"],
        ["authorization", "content-type", "x-team"],
    ]
    assert all(b"accept-encoding: gzip, deflate" in head.lower() for head in heads)


async def test_an_unsupported_coding_and_a_corrupt_gzip_are_protocol_errors(
    client: httpx.AsyncClient,
) -> None:
    """A body in a coding we did not ask for (br) or a corrupt gzip: a ProtocolError that
    names the problem, never a foreign exception."""
    for headers, body, words in (
        ({"content-encoding": "br"}, b"\x00" * 10, "'br' is not supported"),
        ({"content-encoding": "gzip"}, b"\x1f\x8b garbage", "does not decompress"),
    ):
        async with hostile(answer(200, body, headers)) as (url, _):
            with pytest.raises(ProtocolError, match=words):
                await adapter("openai", url, client).complete(req())


async def test_a_huge_error_body_is_cut_not_read(client: httpx.AsyncClient) -> None:
    """A 500 with a 50 MB body: the status's error, after reading at most 256 KiB of it."""
    async with hostile(big_answer(50 * MiB, {}, b"e" * MiB)) as (url, _):
        provider = adapter("openai", url, client)
        provider_error, peak = await peak_during(lambda: provider.complete(req()))()
    # big_answer sends 200: the cap applies; the error path is pinned with a 500 below.
    assert isinstance(provider_error, ResponseTooLarge)

    async def huge_500(stream: trio.SocketStream) -> None:
        await stream.send_all(head(500, {}, 50 * MiB))
        for _ in range(50):
            await stream.send_all(b"e" * MiB)

    async with hostile(huge_500) as (url, _):
        error, peak = await peak_during(lambda: adapter("openai", url, client).complete(req()))()
    assert isinstance(error, ServerError)
    assert peak < 8 * MiB


def test_the_caps_are_configured_per_provider() -> None:
    """``max_response_bytes`` and ``max_event_bytes`` reach the adapter; bad values are refused."""
    from router._providers import build_provider

    config = ProviderConfig(
        kind="openai", api_key_env="K", max_response_bytes=1000, max_event_bytes=100
    )
    provider = build_provider("p", config, {"K": "sk-x"})
    assert isinstance(provider, HTTPProvider)
    assert (provider._max_response_bytes, provider._max_event_bytes) == (1000, 100)
    with pytest.raises(ValueError, match="max_event_bytes"):
        OpenAIProvider(api_key="k", max_event_bytes=0)


# --------------------------------------------------------------------------- item 8c


def test_docs_examples_selected_in_part_leave_no_unclosed_pipe() -> None:
    """Running one docs example with ``-W error::ResourceWarning`` (the others are started
    and never read) ends with every example process reaped: no unclosed-file warning."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",  # one test: no xdist workers
            "-p",
            "no:cacheprovider",
            "-W",
            "error::ResourceWarning",
            "tests/test_docs.py",
            "-k",
            "test_readme_example_talks_to_the_fake_upstream",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "ResourceWarning" not in output, output[-3000:]


# --------------------------------------------------------------------------- abandoned request bodies


@pytest.mark.parametrize("how", ["reset", "cancelled"])
async def test_a_request_body_abandoned_half_sent_leaves_no_unfinished_generator(how: str) -> None:
    """A request body httpcore stops sending (the server resets the connection mid-body,
    or the caller is cancelled mid-body, as a hedge's loser is) leaves nothing for the
    garbage collector to warn about: no ``ResourceWarning``, the call ends typed or
    cancelled, and the connection is gone."""
    import gc
    import socket
    import struct
    import warnings

    async def handler(stream: trio.SocketStream) -> None:
        try:
            if how == "reset":
                buf = b""
                while b"\r\n\r\n" not in buf:  # the head only, never the body
                    buf += await stream.receive_some(65536)
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            else:
                await trio.sleep_forever()  # reads nothing: the client's body write blocks
        finally:
            await stream.aclose()

    big = ChatRequest(model="m", messages=[Message.user("x" * (16 * MiB))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            provider = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}")
            try:
                with trio.move_on_after(5 if how == "reset" else 0.2) as scope:
                    with pytest.raises(LLMError):
                        await provider.complete(big)
                assert scope.cancelled_caught is (how == "cancelled")
            finally:
                await provider.aclose()
            nursery.cancel_scope.cancel()
        gc.collect()
        await trio.lowlevel.checkpoint()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
