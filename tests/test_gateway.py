"""The gateway over real loopback sockets: hypercorn's trio worker in the test's nursery,
the router behind it talking to the fake upstream, the vendors' official async SDKs and
raw httpx in front.

What runs in a subprocess (``llm-router serve``, its signals, the sync SDK clients) is in
tests/test_gateway_serve.py; the pure translation in tests/test_gateway_wire.py.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest
import trio

from providers import AnthropicProvider, OpenAIProvider, Provider, Secret
from router import open_router
from router.config import (
    AuditConfig,
    GatewayConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
)
from router.errors import ConfigError
from router.events import RequestFinished
from router.gateway import GatewayApp, serve_gateway
from router.testing import FakeUpstream, Fault, MockProvider, Scenario, open_fake_upstream

KEY = Secret("sk-gateway-test-key-0123456789")
NO_RETRY = RetryConfig(max_attempts=1)


class Running:
    """A gateway serving on loopback, and what is behind it."""

    def __init__(self, url: str, upstream: FakeUpstream, app: GatewayApp) -> None:
        self.url = url
        self.upstream = upstream
        self.app = app
        self.router = app.gateway.router

    def openai(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kw)

    def sync_openai(self) -> openai.OpenAI:
        """The sync client, for streams (run it in a thread): the async one leaves its
        SSE generators to the garbage collector, which trio reports as a warning."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key="unused", max_retries=0)


def _config(
    routes: Mapping[str, list[str]], gateway: GatewayConfig, audit: AuditConfig | None
) -> RouterConfig:
    kinds = {
        "oa": "openai",
        "an": "anthropic",
        "slow": "openai",
        "down": "openai",
        "limited": "openai",
        "down2": "anthropic",
        "hang": "openai",
    }
    return RouterConfig(
        providers={
            name: ProviderConfig(kind=kind, retry=NO_RETRY)  # type: ignore[arg-type]
            for name, kind in kinds.items()
        },
        routes={alias: RouteConfig(targets=targets) for alias, targets in routes.items()},
        gateway=gateway,
        audit=audit,
    )


SCENARIOS = {
    "slow": Scenario(chunk_interval=0.05, chunk_words=1),
    "down": Scenario(faults=[Fault("status", status=500, rate=1.0)]),
    "down2": Scenario(faults=[Fault("status", status=500, rate=1.0)]),
    "limited": Scenario(faults=[Fault("status", status=429, retry_after=7.5, rate=1.0)]),
    "hang": Scenario(faults=[Fault("hang", rate=1.0)]),
}
ROUTES = {
    "fast": ["oa:gpt-4o-mini", "an:claude-3-5-haiku-latest"],
    "broken": ["down:gpt-4o-mini", "down2:claude-3-5-haiku-latest"],
    "throttled": ["limited:gpt-4o-mini"],
}


@asynccontextmanager
async def running_gateway(
    gateway: GatewayConfig | None = None,
    *,
    audit: AuditConfig | None = None,
    shutdown: trio.Event | None = None,
) -> AsyncIterator[Running]:
    """The gateway over the router over the fake upstream, all on loopback in this run."""
    config = _config(ROUTES, gateway or GatewayConfig(port=0), audit)
    async with (
        open_fake_upstream(SCENARIOS) as upstream,
        httpx.AsyncClient() as client,
    ):
        providers: dict[str, Provider] = {}
        for name, pc in config.providers.items():
            cls = AnthropicProvider if pc.kind == "anthropic" else OpenAIProvider
            providers[name] = cls(
                name=name, api_key=KEY, base_url=upstream.base_url(name, pc.kind), client=client
            )
        async with open_router(config, providers=providers) as router:
            app = GatewayApp(router, config, secrets=(KEY.reveal(),))
            async with trio.open_nursery() as nursery:
                trigger = shutdown.wait if shutdown is not None else None
                url = await nursery.start(
                    lambda task_status: serve_gateway(
                        app, port=0, shutdown_trigger=trigger, task_status=task_status
                    )
                )
                try:
                    yield Running(url, upstream, app)
                finally:
                    if shutdown is None:
                        nursery.cancel_scope.cancel()


async def hung_up(upstream: FakeUpstream, scenario: str) -> None:
    """Wait (3 s at most) for the scenario's one request to end: its client hung up."""
    (record,) = [r for r in upstream.requests if r.scenario == scenario]
    with trio.fail_after(3):
        await record.finished.wait()
    assert record.outcome == "client_disconnected"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- OpenAI SDK


async def test_openai_sdk_completes_through_a_route_with_the_router_headers() -> None:
    """A plain completion through a route: the echo, provider:model, usage, and the
    x-llm-router-* headers naming who answered, in how many attempts, for what cost."""
    async with running_gateway() as gw, gw.openai() as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="fast", messages=user("hello there")
        )
        done = raw.parse()
        assert done.choices[0].message.content == "echo: hello there"
        assert done.choices[0].finish_reason == "stop"
        assert done.model == "oa:gpt-4o-mini"
        assert done.usage is not None
        assert done.usage.completion_tokens > 0
        assert raw.headers["x-llm-router-provider"] == "oa"
        assert raw.headers["x-llm-router-model"] == "gpt-4o-mini"
        assert raw.headers["x-llm-router-attempts"] == "1"
        assert float(raw.headers["x-llm-router-cost"]) > 0
        assert raw.headers["x-llm-router-request-id"].startswith("gw-")
        assert raw.headers["x-request-id"] == raw.headers["x-llm-router-request-id"]


async def test_openai_sdk_streams_with_usage_and_the_stream_matches_the_completion() -> None:
    """A stream with include_usage: deltas join to the non-streamed text, one usage chunk
    with empty choices at the end, the finish reason on the last choice chunk."""
    async with running_gateway() as gw, gw.openai() as sdk:
        whole = await sdk.chat.completions.create(model="oa:gpt-4o-mini", messages=user("a b c d"))

        def read() -> list[Any]:
            with gw.sync_openai() as sync:
                stream = sync.chat.completions.create(
                    model="oa:gpt-4o-mini",
                    messages=user("a b c d"),  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                )
                return list(stream)

        chunks = await trio.to_thread.run_sync(read)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
        assert all(c.usage is None for c in chunks[:-1])


async def test_openai_sdk_tool_calls_streamed_and_not() -> None:
    """A forced tool call: whole in a completion, and as deltas (index, id, name, then
    argument fragments) that the SDK's accumulator joins to the same arguments."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    choice = {"type": "function", "function": {"name": "get_weather"}}
    async with running_gateway() as gw, gw.openai() as sdk:
        done = await sdk.chat.completions.create(
            model="fast",
            messages=user("weather?"),
            tools=[tool],
            tool_choice=choice,  # type: ignore[list-item,arg-type]
        )
        (call,) = done.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"
        assert "city" in msgspec.json.decode(call.function.arguments)
        assert done.choices[0].finish_reason == "tool_calls"

        def read() -> Any:
            with (
                gw.sync_openai() as sync,
                sync.chat.completions.stream(
                    model="fast",
                    messages=user("weather?"),  # type: ignore[arg-type]
                    tools=[tool],  # type: ignore[list-item]
                    tool_choice=choice,  # type: ignore[arg-type]
                ) as stream,
            ):
                return stream.get_final_completion()

        final = await trio.to_thread.run_sync(read)
        (streamed,) = final.choices[0].message.tool_calls or []
        assert streamed.function.name == "get_weather"
        assert msgspec.json.decode(streamed.function.arguments).keys() == {"city"}
        assert streamed.id


async def test_openai_sdk_json_schema_response_format_and_images() -> None:
    """response_format json_schema reaches the upstream as structured output (the answer
    fits the schema); an image_url part passes through as an image."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    async with running_gateway() as gw, gw.openai() as sdk:
        done = await sdk.chat.completions.create(
            model="oa:gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "who is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            },
        )
        value = msgspec.json.decode(done.choices[0].message.content or "")
        assert isinstance(value["name"], str)
        assert isinstance(value["age"], int)
        sent = gw.upstream.requests[-1].body
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["messages"][-1]["content"][1]["image_url"]["url"] == "https://example.com/a.png"


async def test_openai_sdk_embeddings_and_models() -> None:
    """Embeddings come back one vector per input; /v1/models lists routes and targets."""
    async with running_gateway() as gw, gw.openai() as sdk:
        vectors = await sdk.embeddings.create(model="oa:text-embedding-3-small", input=["a", "b"])
        assert [d.index for d in vectors.data] == [0, 1]
        assert len(vectors.data[0].embedding) > 0
        ids = [m.id async for m in sdk.models.list()]
        assert ids[:3] == ["fast", "broken", "throttled"]
        assert "oa:gpt-4o-mini" in ids
        assert "an:claude-3-5-haiku-latest" in ids


@pytest.mark.parametrize(
    ("model", "extra", "status", "error"),
    [
        ("nope", {}, 404, openai.NotFoundError),
        ("fast", {"n": 2}, 400, openai.BadRequestError),
        ("fast", {"extra_body": {"bogus": 1}}, 400, openai.BadRequestError),
        ("throttled", {}, 429, openai.RateLimitError),
        ("broken", {}, 503, openai.InternalServerError),
    ],
)
async def test_openai_sdk_errors_have_the_vendor_shape_and_status(
    model: str, extra: dict[str, Any], status: int, error: type[openai.APIStatusError]
) -> None:
    """Each failure is the status and error class the SDK expects, in OpenAI's shape,
    naming what was wrong, with the attempts of a failed route and never the upstream key."""
    async with running_gateway() as gw, gw.openai() as sdk:
        with pytest.raises(error) as caught:
            await sdk.chat.completions.create(model=model, messages=user("hi"), **extra)
        exc = caught.value
        assert exc.status_code == status
        body = exc.body
        assert isinstance(body, dict)
        assert body["message"]
        assert KEY.reveal() not in exc.response.text
        if status == 429:
            assert exc.response.headers["retry-after"] == "8"  # 7.5 s, rounded up
        if status == 503:
            assert [a["provider"] for a in body["attempts"]] == ["down", "down2"]
            assert all(a["outcome"] == "failed" for a in body["attempts"])
        if model == "fast" and "n" in extra:
            assert body["param"] == "n"
        if "extra_body" in extra:
            assert "bogus" in body["message"]


# --------------------------------------------------------------------------- Anthropic SDK


async def test_anthropic_sdk_messages_plain_streamed_and_tools() -> None:
    """The Messages API inbound: a text answer, the same text streamed (the SDK checks
    Anthropic's event order), a tool_use block, and a 404 in Anthropic's error shape."""
    tools = [
        {
            "name": "get_weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    async with running_gateway() as gw, gw.anthropic() as sdk:
        message = await sdk.messages.create(
            model="an:claude-3-5-haiku-latest",
            max_tokens=100,
            system="Be terse.",
            messages=user("hello there"),  # type: ignore[arg-type]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "echo: hello there"
        assert message.stop_reason == "end_turn"
        async with sdk.messages.stream(
            model="fast",
            max_tokens=100,
            messages=user("hello there"),  # type: ignore[arg-type]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "echo: hello there"
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens > 0
        called = await sdk.messages.create(
            model="fast",
            max_tokens=100,
            messages=user("weather?"),  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        (block,) = [b for b in called.content if b.type == "tool_use"]
        assert block.name == "get_weather"
        assert "city" in block.input
        assert called.stop_reason == "tool_use"
        ids = [m.id async for m in sdk.models.list()]  # Anthropic's shape: anthropic-version
        assert ids[0] == "fast"
        assert "an:claude-3-5-haiku-latest" in ids
        with pytest.raises(anthropic.NotFoundError) as caught:
            await sdk.messages.create(model="nope", max_tokens=10, messages=user("hi"))  # type: ignore[arg-type]
        assert caught.value.body["type"] == "error"  # type: ignore[index]
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


# --------------------------------------------------------------------------- raw bytes


async def test_raw_sse_framing_of_a_stream() -> None:
    """The exact bytes of an OpenAI stream: SSE content type, ``data: {json}`` events
    separated by one blank line, no ``event:`` lines, ending ``data: [DONE]``."""
    body = {"model": "fast", "stream": True, "messages": user("one two")}
    async with running_gateway() as gw, httpx.AsyncClient() as client:
        response = await client.post(f"{gw.url}/v1/chat/completions", json=body)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = response.content
        assert raw.endswith(b"\n\ndata: [DONE]\n\n")
        events = raw.split(b"\n\n")
        assert events[-1] == b""
        assert all(e.startswith(b"data: ") and b"\n" not in e for e in events[:-1])
        chunks = [msgspec.json.decode(e[6:]) for e in events[:-2]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "usage" not in chunks[0]  # only with stream_options.include_usage
        assert chunks[-1]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }


async def test_raw_errors_for_bad_bodies_paths_and_methods() -> None:
    """Malformed JSON, a wrong type, an unknown path and a wrong method are each a clear
    4xx in the vendor's shape (Anthropic's on /v1/messages), never a traceback."""
    async with running_gateway() as gw, httpx.AsyncClient(base_url=gw.url) as client:
        bad_json = await client.post("/v1/chat/completions", content=b"{not json")
        assert bad_json.status_code == 400
        assert "JSON" in bad_json.json()["error"]["message"]
        wrong_type = await client.post(
            "/v1/chat/completions", json={"model": "fast", "messages": user("x"), "max_tokens": "9"}
        )
        assert wrong_type.status_code == 400
        assert "$.max_tokens" in wrong_type.json()["error"]["message"]
        missing = await client.post("/v1/messages", json={"model": "fast", "messages": user("x")})
        assert missing.status_code == 400
        assert missing.json()["type"] == "error"
        assert "max_tokens" in missing.json()["error"]["message"]
        unknown = await client.get("/v2/nothing")
        assert unknown.status_code == 404
        assert "error" in unknown.json()
        method = await client.get("/v1/chat/completions")
        assert method.status_code == 405
        assert method.headers["allow"] == "POST"
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 404
        assert "prometheus" in metrics.json()["error"]["message"]


async def test_a_body_over_the_limit_is_a_413() -> None:
    """A body larger than ``gateway.max_body_bytes`` is refused with a 413, unread."""
    async with (
        running_gateway(GatewayConfig(port=0, max_body_bytes=1000)) as gw,
        httpx.AsyncClient() as client,
    ):
        response = await client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "fast", "messages": user("x" * 2000)},
        )
        assert response.status_code == 413
        assert "1000 bytes" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- deadline, disconnect


async def test_x_request_timeout_is_a_504_and_cancels_the_upstream() -> None:
    """``x-request-timeout`` against a hanging upstream: a 504 in time, and the upstream
    saw its client go away (the deadline cancelled the exchange)."""
    async with running_gateway() as gw, httpx.AsyncClient() as client:
        t0 = trio.current_time()
        response = await client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "hang:gpt-4o-mini", "messages": user("hi")},
            headers={"x-request-timeout": "0.3"},
        )
        assert response.status_code == 504
        assert 0.3 <= trio.current_time() - t0 < 5
        assert "x-request-timeout" in response.json()["error"]["message"]
        await hung_up(gw.upstream, "hang")
        bad = await client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "fast", "messages": user("hi")},
            headers={"x-request-timeout": "soon"},
        )
        assert bad.status_code == 400
        assert "x-request-timeout" in bad.json()["error"]["message"]


async def raw_request(url: str, body: dict[str, Any]) -> trio.SocketStream:
    """A POST of ``body`` to ``/v1/chat/completions`` on a socket of its own: the
    client the test hangs up by closing it (no HTTP client library in between)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    data = msgspec.json.encode(body)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    await stream.send_all(head.encode() + data)
    return stream


async def test_a_client_disconnect_cancels_the_upstream_request_at_once() -> None:
    """A client that goes away mid-request (non-streaming, upstream hanging) and one
    that goes away mid-stream: each closes its upstream exchange promptly."""
    async with running_gateway() as gw:
        sock = await raw_request(gw.url, {"model": "hang:gpt-4o-mini", "messages": user("hi")})
        with trio.fail_after(3):
            while not [r for r in gw.upstream.requests if r.scenario == "hang"]:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await sock.aclose()
        await hung_up(gw.upstream, "hang")

        long = " ".join(["word"] * 200)  # 200 chunks, 50 ms apart: 10 s of stream
        sock = await raw_request(
            gw.url, {"model": "slow:gpt-4o-mini", "stream": True, "messages": user(long)}
        )
        received = b""
        with trio.fail_after(3):
            while b"data: " not in received:
                received += await sock.receive_some()
        assert received.startswith(b"HTTP/1.1 200")
        await sock.aclose()
        await hung_up(gw.upstream, "slow")
        assert gw.router.statistics().providers["slow"].in_flight == 0


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_drains_a_stream_in_flight_then_refuses_new_connections() -> None:
    """After the shutdown trigger, a stream already running finishes (to [DONE]) within
    the grace period, and the gateway stops accepting connections."""
    shutdown = trio.Event()
    long = " ".join(["word"] * 20)  # 20 chunks, 50 ms apart: about 1 s
    async with running_gateway(GatewayConfig(port=0, grace=10.0), shutdown=shutdown) as gw:
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json={"model": "slow:gpt-4o-mini", "stream": True, "messages": user(long)},
            ) as response:
                parts = []
                async for part in response.aiter_bytes():
                    if not parts:
                        shutdown.set()
                    parts.append(part)
            assert b"".join(parts).endswith(b"data: [DONE]\n\n")
        with trio.fail_after(5):
            while True:
                try:
                    async with httpx.AsyncClient() as fresh:
                        await fresh.get(f"{gw.url}/healthz")
                except httpx.ConnectError:
                    break
                await trio.sleep(0.05)


async def test_shutdown_cancels_what_outlives_the_grace_period() -> None:
    """A stream longer than the grace period is cut when it ends, and the upstream
    exchange is closed with it."""
    shutdown = trio.Event()
    long = " ".join(["word"] * 200)  # 10 s of stream
    async with running_gateway(GatewayConfig(port=0, grace=0.3), shutdown=shutdown) as gw:
        async with httpx.AsyncClient() as client:
            t0 = math.inf
            with pytest.raises(httpx.RemoteProtocolError):
                async with (
                    client.stream(
                        "POST",
                        f"{gw.url}/v1/chat/completions",
                        json={"model": "slow:gpt-4o-mini", "stream": True, "messages": user(long)},
                    ) as response,
                    aclosing(response.aiter_bytes()) as body,
                ):
                    async for _ in body:
                        if not shutdown.is_set():
                            shutdown.set()
                            t0 = trio.current_time()
            assert trio.current_time() - t0 < 3
        await hung_up(gw.upstream, "slow")


# --------------------------------------------------------------------------- the rest


async def test_audit_and_events_see_a_gateway_request_as_in_process(tmp_path: Path) -> None:
    """A gateway request is an ordinary router request: its RequestFinished event and its
    audit record carry the gateway's request id (the x-llm-router-request-id header)."""
    audit = AuditConfig(path=str(tmp_path / "audit.jsonl"), content="full")
    finished: list[RequestFinished] = []
    async with running_gateway(audit=audit) as gw, httpx.AsyncClient() as client:
        gw.router.add_listener(
            lambda e: finished.append(e) if isinstance(e, RequestFinished) else None
        )
        response = await client.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "fast", "messages": user("audit me"), "user": "alice"},
        )
        request_id = response.headers["x-llm-router-request-id"]
        assert [e.request_id for e in finished] == [request_id]
    records = [
        msgspec.json.decode(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()
    ]
    (record,) = [r for r in records if r.get("request_id") == request_id]
    assert "audit me" in msgspec.json.encode(record).decode()
    assert KEY.reveal() not in (tmp_path / "audit.jsonl").read_text()


async def test_binding_a_non_loopback_address_without_keys_is_refused() -> None:
    """No gateway keys means loopback only: serving 0.0.0.0 is a ConfigError saying why."""
    mock_config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(mock_config, providers={"m": MockProvider()}) as router:
        app = GatewayApp(router, mock_config)
        with pytest.raises(ConfigError, match="no keys configured") as caught:
            await serve_gateway(app, host="0.0.0.0", port=0)
        assert caught.value.path == "$.gateway.host"
        for host in ("127.0.0.1", "::1", "localhost"):
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    lambda task_status, h=host: serve_gateway(
                        app, host=h, port=0, task_status=task_status
                    )
                )
                assert url.startswith("http://")
                nursery.cancel_scope.cancel()
