"""The adapters over HTTP/2 (h2c, prior knowledge) on a real loopback socket.

``default_client()`` speaks HTTP/2 whenever the ``h2`` extra is installed, so the
adapters' HTTP/2 path is a production path.  The fake upstream speaks HTTP/1.1 only;
the server here is a few lines of ``h2`` that answers OpenAI's chat format: a whole
completion, or a stream of one chunk a second.  Virtual time (``autojump_clock``), as in
test_router_wire.py: on loopback no virtual time passes while bytes are in transit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from providers import ChatRequest, Message, OpenAIProvider, Secret, TextDelta
from router import open_router
from router.config import ProviderConfig, RouterConfig

h2_config = pytest.importorskip("h2.config")
h2_connection = pytest.importorskip("h2.connection")
h2_events = pytest.importorskip("h2.events")


def _chunk(text: str) -> bytes:
    data = {
        "id": "chatcmpl-h2",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-h2",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "over h2"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
).encode()


async def _serve(stream: trio.SocketStream) -> None:
    conn = h2_connection.H2Connection(
        config=h2_config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    bodies: dict[int, bytes] = {}
    send_lock = trio.Lock()

    async def flush() -> None:
        async with send_lock:
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)

    async def respond(stream_id: int) -> None:
        body: dict[str, Any] = json.loads(bodies.pop(stream_id) or b"{}")
        if not body.get("stream"):
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json")])
            conn.send_data(stream_id, _COMPLETION, end_stream=True)
            await flush()
            return
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/event-stream")])
        await flush()
        for i in range(100):
            try:
                conn.send_data(stream_id, _chunk(f"w{i} "))
            except Exception:  # the client reset the stream
                return
            await flush()
            await trio.sleep(1.0)  # a slow model: a chunk a second

    async with trio.open_nursery() as nursery:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                nursery.cancel_scope.cancel()
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2_events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2_events.RequestReceived):
                    bodies.setdefault(event.stream_id, b"")
                elif isinstance(event, h2_events.StreamEnded):
                    nursery.start_soon(respond, event.stream_id)
            await flush()


@asynccontextmanager
async def h2_provider() -> AsyncIterator[OpenAIProvider]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _serve, 0)
        port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            yield OpenAIProvider(
                name="a",
                api_key=Secret("sk-test-h2"),
                base_url=f"http://127.0.0.1:{port}/v1",
                client=client,
            )
        nursery.cancel_scope.cancel()


def _chat() -> ChatRequest:
    return ChatRequest(model="a:m", messages=[Message.user("hi")])


async def test_complete_over_http2(autojump_clock: trio.testing.MockClock) -> None:
    """A whole answer through the router over HTTP/2: text, usage, the winning attempt."""
    async with h2_provider() as provider:
        config = RouterConfig(providers={"a": ProviderConfig(kind="openai", presets=False)})
        async with open_router(config, providers={"a": provider}) as router:
            response = await router.complete(_chat())
    assert response.text == "over h2"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 2)
    assert [a.outcome for a in response.attempts] == ["won"]


@pytest.mark.parametrize("through_router", [False, True])
async def test_leaving_an_http2_stream_early_returns_at_once(
    through_router: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Leaving a stream after its first event takes no time over HTTP/2 either.

    Regression: reading the body to its end after closing it (so that httpx's reader
    generators finish and trio does not warn) waited for a closed HTTP/2 stream that
    never gets data nor an error, and sat out its 5 s bound, shielded from the caller's
    cancellation.
    """
    async with h2_provider() as provider:
        request = _chat()
        if through_router:
            config = RouterConfig(providers={"a": ProviderConfig(kind="openai", presets=False)})
            async with open_router(config, providers={"a": provider}) as router:
                async with router.stream(request) as events:
                    first = await events.__anext__()
                    left_at = trio.current_time()
                assert trio.current_time() == left_at
        else:
            async with provider.stream(ChatRequest(model="m", messages=request.messages)) as raw:
                first = await raw.__anext__()
                left_at = trio.current_time()
            assert trio.current_time() == left_at
    assert isinstance(first, TextDelta)


async def test_a_deadline_while_holding_an_http2_stream_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller whose deadline fires while it holds a slow HTTP/2 stream (between reads)
    is released at the deadline, not after the drain's bound."""
    async with h2_provider() as provider:
        config = RouterConfig(providers={"a": ProviderConfig(kind="openai", presets=False)})
        async with open_router(config, providers={"a": provider}) as router:
            start = trio.current_time()
            with trio.move_on_after(0.5):
                async with router.stream(_chat()) as events:
                    await events.__anext__()
                    await trio.sleep(10)  # holding the stream, not reading it
            assert trio.current_time() - start == pytest.approx(0.5)
