"""The gateway in process: the official SDKs over :class:`router.gateway.GatewayTransport`.

No gateway socket: the SDK's ``httpx`` (or ``httpx2``) client hands each request to the
transport, which runs the gateway's endpoint code (the code behind ``llm-router serve``);
the router behind it talks to the fake upstream over real loopback sockets.  Everything
runs on virtual time (``autojump_clock``): the upstream stamps its records with the same
trio clock, so the times asserted here are exact.
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import msgspec
import openai
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import (
    AnthropicProvider,
    ChatRequest,
    Message,
    OpenAIProvider,
    Provider,
    Secret,
)
from router import Router, open_router
from router.config import (
    GatewayConfig,
    MockConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
)
from router.gateway import GatewayApp, GatewayTransport
from router.testing import FakeUpstream, Fault, Fixed, Scenario, open_fake_upstream

# The SDKs' async streams leave their own SSE generators (and httpx's aiter_bytes) to the
# garbage collector, even when closed with ``async with``; trio's finalizer closes them
# and warns.  Theirs only: the transport's own body stream is no generator.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator '(openai|anthropic|httpx2?)\._[a-z_]+\.:ResourceWarning"
)

ROOT = Path(__file__).resolve().parent.parent
KEY = Secret("sk-transport-test-key-5e1f0c9a7b")
NO_RETRY = RetryConfig(max_attempts=1)
BASE = "http://router.invalid"

KINDS = {"oa": "openai", "an": "anthropic", "slow": "openai", "hang": "openai"}
KINDS |= {"limited": "openai", "down": "openai", "aslow": "anthropic"}
SCENARIOS = {
    "slow": Scenario(chunk_interval=0.1),
    "aslow": Scenario(chunk_interval=0.1),
    "hang": Scenario(latency=Fixed(1000.0)),
    "limited": Scenario(faults=[Fault("status", status=429, retry_after=7.5, rate=1.0)]),
    "down": Scenario(faults=[Fault("status", status=500, rate=1.0)]),
}


class InProcess:
    """A router over the fake upstream, and the transport over the router."""

    def __init__(self, upstream: FakeUpstream, router: Router, transport: GatewayTransport):
        self.upstream = upstream
        self.router = router
        self.transport = transport

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{BASE}/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=self.transport),
        )

    async def warm_openai(self) -> openai.AsyncOpenAI:
        """A client that has made its first request: the SDK's first one reads the
        platform in a worker thread, and virtual time jumps while a thread runs."""
        client = self.openai()
        await client.models.list()
        return client

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=BASE,
            api_key="unused",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=self.transport),
        )

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, base_url=BASE)


def _config(gateway: GatewayConfig | None = None) -> RouterConfig:
    return RouterConfig(
        providers={
            name: ProviderConfig(kind=kind, retry=NO_RETRY)  # type: ignore[arg-type]
            for name, kind in KINDS.items()
        },
        routes={
            "fast": RouteConfig(targets=["oa:gpt-4o-mini", "an:claude-3-5-haiku-latest"]),
            "throttled": RouteConfig(targets=["limited:gpt-4o-mini"]),
        },
        gateway=gateway or GatewayConfig(),
    )


@asynccontextmanager
async def in_process(gateway: GatewayConfig | None = None) -> AsyncIterator[InProcess]:
    config = _config(gateway)
    async with open_fake_upstream(SCENARIOS) as upstream, httpx.AsyncClient() as client:
        providers: dict[str, Provider] = {}
        for name, pc in config.providers.items():
            cls = AnthropicProvider if pc.kind == "anthropic" else OpenAIProvider
            providers[name] = cls(
                name=name, api_key=KEY, base_url=upstream.base_url(name, pc.kind), client=client
            )
        async with open_router(config, providers=providers) as router:
            yield InProcess(
                upstream, router, GatewayTransport(router, config, secrets=(KEY.reveal(),))
            )


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task of this run, walking the task tree from the root."""
    found: list[trio.lowlevel.Task] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


async def hung_up(upstream: FakeUpstream, scenario: str) -> float:
    """The scenario's one request ended because its client hung up; when (virtual time)."""
    (record,) = [r for r in upstream.requests if r.scenario == scenario]
    with trio.fail_after(3):
        await record.finished.wait()
    assert record.outcome == "client_disconnected"
    assert upstream.stats(scenario).client_disconnected == 1  # the disconnect counter
    return trio.current_time()


# --------------------------------------------------------------------------- OpenAI SDK


async def test_openai_sdk_completes_in_process_with_the_router_headers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AsyncOpenAI (on trio) over the transport: a route answers, with the gateway's
    router headers and OpenAI's completion shape; no socket to a gateway exists."""
    async with in_process() as ip:
        raw = await ip.openai().chat.completions.with_raw_response.create(
            model="fast", messages=user("hello there")
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == "echo: hello there"
        assert completion.object == "chat.completion"
        assert raw.headers["x-llm-router-provider"] == "oa"
        assert raw.headers["x-llm-router-model"] == "gpt-4o-mini"
        assert raw.headers["x-llm-router-attempts"] == "1"
        assert raw.headers["x-request-id"] == raw.headers["x-llm-router-request-id"]
        assert [r.scenario for r in ip.upstream.requests] == ["oa"]


async def test_openai_sdk_stream_is_not_buffered_and_matches_the_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream's first chunk reaches the caller while the upstream is still sending (at
    the upstream's first chunk, not its last), and its deltas join to the completion."""
    async with in_process() as ip:
        client = ip.openai()
        text = "one two three four five"
        whole = await client.chat.completions.create(model="slow:gpt-4o-mini", messages=user(text))
        t0 = trio.current_time()
        arrivals: list[float] = []
        deltas: list[str] = []
        usage = None
        stream = await client.chat.completions.create(
            model="slow:gpt-4o-mini",
            messages=user(text),
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(trio.current_time() - t0)
                    deltas.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
        assert "".join(deltas) == whole.choices[0].message.content
        # "echo:" and six words, 0.1 s apart: each reaches the caller as it is sent.
        assert arrivals == pytest.approx([0.1 * i for i in range(len(arrivals))], abs=1e-9)
        assert len(arrivals) == 6
        assert usage is not None
        assert usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]


async def test_openai_sdk_tools_and_json_schema(autojump_clock: trio.testing.MockClock) -> None:
    """Tools (streamed and not) and a JSON-schema response format through the transport."""
    tools: Any = [
        {
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
    ]
    async with in_process() as ip:
        client = ip.openai()
        plain = await client.chat.completions.create(
            model="oa:gpt-4o-mini", messages=user("call get_weather please"), tools=tools
        )
        (call,) = plain.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert "city" in msgspec.json.decode(call.function.arguments)  # type: ignore[union-attr]
        assert plain.choices[0].finish_reason == "tool_calls"
        stream = await client.chat.completions.create(
            model="oa:gpt-4o-mini",
            messages=user("call get_weather please"),
            tools=tools,
            stream=True,
        )
        names, arguments, finish = [], [], None
        async with stream:
            async for chunk in stream:
                for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                    if delta.function and delta.function.name:
                        names.append(delta.function.name)
                    if delta.function and delta.function.arguments:
                        arguments.append(delta.function.arguments)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
        assert names == ["get_weather"]
        assert msgspec.json.decode("".join(arguments)) == msgspec.json.decode(
            call.function.arguments  # type: ignore[union-attr]
        )
        assert finish == "tool_calls"
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "integer"}},
            "required": ["answer"],
            "additionalProperties": False,
        }
        shaped = await client.chat.completions.create(
            model="oa:gpt-4o-mini",
            messages=user("a number please"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema, "strict": True},
            },
        )
        value = msgspec.json.decode(shaped.choices[0].message.content or "")
        assert isinstance(value["answer"], int)


async def test_openai_sdk_embeddings_and_models(autojump_clock: trio.testing.MockClock) -> None:
    """Embeddings (the SDK asks for base64 by default) and the model list, in process."""
    async with in_process() as ip:
        client = ip.openai()
        result = await client.embeddings.create(
            model="oa:text-embedding-3-small", input=["alpha", "beta"]
        )
        assert [d.index for d in result.data] == [0, 1]
        assert all(len(d.embedding) > 0 for d in result.data)
        ids = [m.id async for m in client.models.list()]
        assert ids[:2] == ["fast", "throttled"]
        assert "oa:gpt-4o-mini" in ids


async def test_openai_sdk_errors_have_the_vendor_status_and_shape(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """404 for an unknown model, 400 naming a bad field, 429 with retry-after, 502 with
    the attempt summary and never the upstream key, 413 over the body limit."""
    async with in_process(GatewayConfig(max_body_bytes=2000)) as ip:
        client = ip.openai()
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nowhere", messages=user("x"))
        assert missing.value.status_code == 404
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="fast", messages=user("x"), n=2)
        assert bad.value.status_code == 400
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="throttled", messages=user("x"))
        assert limited.value.response.headers["retry-after"] == "8"
        with pytest.raises(openai.InternalServerError) as down:
            await client.chat.completions.create(model="down:gpt-4o-mini", messages=user("x"))
        assert down.value.status_code == 502
        body: Any = down.value.body
        assert body["attempts"][0]["provider"] == "down"
        assert KEY.reveal() not in down.value.response.text
        with pytest.raises(openai.APIStatusError) as large:
            await client.chat.completions.create(model="fast", messages=user("x" * 3000))
        assert large.value.status_code == 413
        assert "2000 bytes" in large.value.message


async def test_x_request_timeout_is_a_504_at_the_deadline_and_hangs_up_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``x-request-timeout: 1.5`` against a hanging upstream: the 504 comes at exactly
    1.5 s (virtual), and the upstream saw its client hang up then."""
    async with in_process() as ip:
        client = await ip.warm_openai()
        t0 = trio.current_time()
        with pytest.raises(openai.APIStatusError) as late:
            await client.chat.completions.create(
                model="hang:gpt-4o-mini",
                messages=user("hi"),
                extra_headers={"x-request-timeout": "1.5"},
            )
        assert trio.current_time() - t0 == pytest.approx(1.5, abs=1e-9)
        assert late.value.status_code == 504
        assert "x-request-timeout" in late.value.message
        assert await hung_up(ip.upstream, "hang") - t0 == pytest.approx(1.5, abs=1e-9)


async def test_x_request_timeout_ends_a_stream_with_an_error_event_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream under ``x-request-timeout: 0.35``: content until then, then OpenAI's
    in-stream error (a 504's type and code) and no ``[DONE]``, at exactly 0.35 s; the
    upstream saw its client hang up then."""
    async with in_process() as ip, ip.http() as http:
        long = " ".join(["word"] * 100)
        t0 = trio.current_time()
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "slow:gpt-4o-mini", "stream": True, "messages": user(long)},
            headers={"x-request-timeout": "0.35"},
        ) as response:
            assert response.status_code == 200
            events = [line async for line in response.aiter_lines() if line]
        assert trio.current_time() - t0 == pytest.approx(0.35, abs=1e-9)
        assert "data: [DONE]" not in events
        error = msgspec.json.decode(events[-1].removeprefix("data: "))["error"]
        assert (error["type"], error["code"]) == ("timeout_error", "deadline_exceeded")
        assert len(events) == 6  # the role chunk, the deltas at 0 .. 0.3 s, the error
        assert await hung_up(ip.upstream, "slow") - t0 == pytest.approx(0.35, abs=1e-9)


# --------------------------------------------------------------------------- cancellation


async def test_a_caller_cancelled_mid_stream_closes_the_upstream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cancel scope around the SDK's stream fires mid-stream, and the response is never
    closed by the caller: the upstream records the hang-up at that instant, the provider
    has nothing in flight, and no task is left behind."""
    async with in_process() as ip:
        client = await ip.warm_openai()
        before = sorted(t.name for t in all_tasks())
        long = " ".join(["word"] * 100)  # 101 chunks, 0.1 s apart: 10 s of stream
        seen = 0
        t0 = trio.current_time()
        with trio.move_on_after(0.35):
            stream = await client.chat.completions.create(
                model="slow:gpt-4o-mini", messages=user(long), stream=True
            )
            async for _chunk in stream:
                seen += 1
        assert seen == 5  # role chunk, then the deltas at 0, 0.1, 0.2, 0.3 s
        assert await hung_up(ip.upstream, "slow") - t0 == pytest.approx(0.35, abs=1e-9)
        assert ip.router.statistics().providers["slow"].in_flight == 0
        await trio.testing.wait_all_tasks_blocked()  # the upstream's handler, ending
        assert sorted(t.name for t in all_tasks()) == before
        del stream
        gc.collect()


async def test_a_read_cancelled_mid_stream_closes_the_router_stream_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Raw httpx, a response that nobody closes: the caller's cancel scope fires while a
    body read waits, and the transport's body stream closes the router's stream (and
    the upstream exchange) then, not when the response is garbage collected."""
    async with in_process() as ip, ip.http() as http:
        long = " ".join(["word"] * 100)
        request = http.build_request(
            "POST",
            "/v1/chat/completions",
            json={"model": "slow:gpt-4o-mini", "stream": True, "messages": user(long)},
        )
        t0 = trio.current_time()
        response = await http.send(request, stream=True)
        chunks = 0
        with trio.move_on_after(0.25):
            async for _ in response.aiter_raw():
                chunks += 1
        assert chunks == 4  # the role chunk, then the deltas at 0, 0.1 and 0.2 s
        assert await hung_up(ip.upstream, "slow") - t0 == pytest.approx(0.25, abs=1e-9)
        assert ip.router.statistics().providers["slow"].in_flight == 0
        assert not response.is_closed  # the caller never closed it: the transport did
        await response.aclose()


async def test_closing_the_response_early_closes_the_router_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Raw httpx: read one chunk of an SSE stream, leave the ``async with``: the upstream
    exchange ends at once, and the next request is served normally."""
    async with in_process() as ip, ip.http() as http:
        long = " ".join(["word"] * 100)
        t0 = trio.current_time()
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "slow:gpt-4o-mini", "stream": True, "messages": user(long)},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for first in response.aiter_raw():
                assert first.startswith(b"data: ")
                break
        assert await hung_up(ip.upstream, "slow") - t0 == pytest.approx(0.0, abs=1e-9)
        assert ip.router.statistics().providers["slow"].in_flight == 0
        again = await http.get("/healthz")
        assert again.json() == {"status": "ok"}


# --------------------------------------------------------------------------- Anthropic SDK


async def test_anthropic_sdk_messages_plain_streamed_tools_and_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AsyncAnthropic (httpx2) over the same transport: a message, a stream in
    Anthropic's event order, a tool_use block, and Anthropic's error shape."""
    async with in_process() as ip:
        client = ip.anthropic()
        message = await client.messages.create(
            model="an:claude-3-5-haiku-latest", max_tokens=64, messages=user("hello")
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "echo: hello"
        kinds: list[str] = []
        t0 = trio.current_time()
        first_delta = None
        async with client.messages.stream(
            model="aslow:claude-3-5-haiku-latest", max_tokens=64, messages=user("a b c d")
        ) as stream:
            async for event in stream:
                if event.type == "content_block_delta" and first_delta is None:
                    first_delta = trio.current_time() - t0
                if event.type in {
                    "message_start",
                    "content_block_start",
                    "content_block_stop",
                    "message_delta",
                    "message_stop",
                }:
                    kinds.append(event.type)
            final = await stream.get_final_message()
        assert kinds == [
            "message_start",
            "content_block_start",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert first_delta == pytest.approx(0.0, abs=1e-9)  # not held back for the end
        assert final.content[0].text == "echo: a b c d"  # type: ignore[union-attr]
        tooled = await client.messages.create(
            model="an:claude-3-5-haiku-latest",
            max_tokens=64,
            messages=user("use get_weather"),
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        )
        assert tooled.stop_reason == "tool_use"
        assert tooled.content[-1].type == "tool_use"
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(model="nowhere", max_tokens=8, messages=user("x"))
        assert missing.value.status_code == 404
        body: Any = missing.value.body
        assert body["type"] == "error"
        assert body["error"]["type"] == "not_found_error"


# --------------------------------------------------------------------------- one path


_ID = re.compile(rb"gw-[0-9a-f]{8}-\d+|req_fake\d+")

BODIES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"{}",
            b'{"model": "fast"}',
            b'{"model": "fast", "messages": []}',
            b'{"model": "nowhere", "messages": [{"role": "user", "content": "x"}]}',
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "n": 3}',
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "frog": 1}',
            b'{"model": "throttled", "messages": [{"role": "user", "content": "x"}]}',
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}]}',
            b'{"model": "fast", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}',
            b'{"model": "oa:text-embedding-3-small", "input": "x"}',
            b'{"model": "fast", "input": []}',
        ]
    ),
)
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v2/nothing"])


def _normalised(response: httpx.Response) -> tuple[Any, ...]:
    """Status, headers and body, with the gateway's and the upstream's request ids
    blanked out."""
    headers = sorted(
        (name, _ID.sub(b"ID", value.encode()))
        for name, value in response.headers.items()
        if name != "content-length"
    )
    return response.status_code, headers, _ID.sub(b"ID", response.content)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=PATHS, body=BODIES)
async def test_the_transport_answers_exactly_as_the_asgi_app(path: str, body: bytes) -> None:
    """Invariant: for any body to any path, the transport's status, headers and body are
    the ASGI app's (one endpoint code path), request ids aside.

    The ASGI app runs under httpx's ``ASGITransport`` (a loopback client address), which
    buffers the reply: fine for whole answers; streams are compared by their text above."""
    # Each path gets a router of its own, fresh: a 429 pauses its provider, which would
    # change the second answer if they shared one.
    async with in_process() as ip, ip.http() as direct:
        one = await direct.post(path, content=body)
    async with in_process() as ip:
        app = GatewayApp(ip.router, _config(), secrets=(KEY.reveal(),))
        asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=asgi, base_url=BASE) as via:
            two = await via.post(path, content=body)
        assert _normalised(one) == _normalised(two)


# --------------------------------------------------------------------------- the docs


def test_the_transport_example_of_docs_gateway_md_runs() -> None:
    """docs/gateway.md's GatewayTransport example (marked not-runnable for test_docs,
    which runs every block at once) runs in its own interpreter and prints what its
    comments say: the OpenAI SDK's completion and stream, the Anthropic SDK's message."""
    from tests.test_docs import child_env, parse_markdown

    blocks, _ = parse_markdown(ROOT / "docs" / "gateway.md")
    (block,) = [b for b in blocks if "GatewayTransport(" in b.code]
    # Every warning an error, but the SDKs' own unclosed SSE generators (see above).
    quiet = (
        "import warnings\n"
        "warnings.filterwarnings('ignore', "
        'r"Async generator \'(openai|anthropic|httpx2?)\\._[a-z_]+\\.", ResourceWarning)\n'
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", quiet + block.code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hi from the router local:mock-model",
        "['', 'hi', ' from', ' the', ' router', '']",
        "hi from the router",
    ]
    assert result.stderr == ""


async def test_after_the_router_closes_the_transport_answers_503_and_owns_nothing() -> None:
    """The transport does not own the router: closing its client leaves the router
    serving, and once the router is closed a request is a 503 in the vendor's shape,
    not an exception from deep inside."""
    config = RouterConfig(
        providers={"local": ProviderConfig(kind="mock", mock=MockConfig(reply="hi"))},
        routes={"fast": RouteConfig(targets=["local:mock-model"])},
    )
    body = {"model": "fast", "messages": user("x")}
    async with open_router(config) as router:
        transport = GatewayTransport(router, config)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert (
            await router.complete(ChatRequest(model="fast", messages=[Message.user("x")]))
        ).text == "hi"
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        closed = await http.post("/v1/chat/completions", json=body)
    assert closed.status_code == 503
    assert closed.json()["error"]["type"] == "service_unavailable_error"
