"""The fake upstream: an HTTP server on loopback speaking OpenAI and Anthropic, with faults.

Pure parts (distributions, fault selection, schema examples, reply planning) are tested
directly; the server over real sockets with plain httpx; fidelity with the vendors'
official SDKs (sync clients in a thread).
"""

from __future__ import annotations

import base64
import json
import random
import re
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import msgspec
import openai
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from providers._errors import ConfigError
from providers.testing._formats._base import format_seconds as _format_seconds
from providers.testing._formats._base import go_duration as _go_duration
from providers.testing._records import RecordedRequest, UpstreamStats
from providers.testing._scenario import (
    ChatView,
    Fault,
    Fixed,
    LogNormal,
    Mixture,
    MixtureComponent,
    OfferedTool,
    Scenario,
    Uniform,
    load_scenarios,
    plan_reply,
    schema_example,
    select_fault,
    split_words,
)
from providers.testing._server import FakeUpstream, open_fake_upstream, serve_fake_upstream

T = TypeVar("T")

OA_AUTH = {"authorization": "Bearer sk-test"}
AN_AUTH = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
WEATHER_TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city"],
}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def oa_chat(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


def an_chat(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    body = {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
    }
    return {**body, **extra}


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an OpenAI-style stream, in order."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def sse_events(text: str) -> list[tuple[str, Any]]:
    """``(event name, decoded data)`` pairs of an Anthropic-style stream."""
    out: list[tuple[str, Any]] = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if len(lines) >= 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "):
            out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


class Address(msgspec.Struct):
    city: str
    zip_code: int


class User(msgspec.Struct):
    name: str
    score: float
    active: bool
    tags: list[str]
    address: Address
    nickname: str | None = None
    joined: datetime | None = None


class Answer(msgspec.Struct):
    answer: str
    confidence: float


@pytest.fixture
def upstream_seed() -> int:
    """This module's upstream (the shared ``upstream`` fixture) is seeded with 7."""
    return 7


async def oa_post(
    client: httpx.AsyncClient,
    up: FakeUpstream,
    scenario: str,
    body: Any,
    path: str = "/chat/completions",
) -> httpx.Response:
    return await client.post(up.base_url(scenario, "openai") + path, headers=OA_AUTH, json=body)


async def an_post(
    client: httpx.AsyncClient,
    up: FakeUpstream,
    scenario: str,
    body: Any,
    path: str = "/v1/messages",
) -> httpx.Response:
    return await client.post(up.base_url(scenario, "anthropic") + path, headers=AN_AUTH, json=body)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def wait_finished(record: RecordedRequest) -> None:
    with trio.fail_after(2):
        await record.finished.wait()


# --------------------------------------------------------------------------- pure parts


def test_latency_distributions_sample_within_their_bounds() -> None:
    """Each distribution is a pure function of the rng: bounded, seeded, mixture weighted."""
    rng = random.Random(1)
    assert Fixed(0.25).sample(rng) == 0.25
    assert all(0.1 <= Uniform(0.1, 0.2).sample(rng) <= 0.2 for _ in range(200))
    draws = sorted(LogNormal(median=0.2, sigma=0.5).sample(rng) for _ in range(2001))
    assert 0.17 < draws[1000] < 0.23
    stalls = Mixture([MixtureComponent(0.9, Fixed(0.01)), MixtureComponent(0.1, Fixed(5.0))])
    samples = [stalls.sample(rng) for _ in range(2000)]
    assert set(samples) == {0.01, 5.0}
    assert 100 < samples.count(5.0) < 300
    first = [LogNormal(0.2, 0.5).sample(random.Random(3)) for _ in range(3)]
    assert first == [LogNormal(0.2, 0.5).sample(random.Random(3)) for _ in range(3)]


def test_scenario_decodes_from_a_plain_dict_and_rejects_unknown_fields() -> None:
    """Config is msgspec: a TOML-shaped dict converts, with the tagged latency union."""
    raw = {
        "latency": {
            "dist": "mixture",
            "components": [
                {"weight": 0.98, "latency": {"dist": "lognormal", "median": 0.1, "sigma": 0.4}},
                {"weight": 0.02, "latency": {"dist": "fixed", "seconds": 3.0}},
            ],
        },
        "chunk_words": 3,
        "faults": [{"kind": "status", "status": 429, "rate": 0.1, "retry_after": 2}],
    }
    scenario = msgspec.convert(raw, Scenario)
    assert isinstance(scenario.latency, Mixture)
    assert scenario.latency.components[1].latency == Fixed(3.0)
    assert scenario.faults == [Fault("status", rate=0.1, status=429, retry_after=2.0)]
    with pytest.raises(msgspec.ValidationError, match="unknown field `chunk_size`"):
        msgspec.convert({"chunk_size": 2}, Scenario)
    with pytest.raises(msgspec.ValidationError, match=r"`rate` must be within \[0, 1\]"):
        msgspec.convert({"faults": [{"kind": "reset", "rate": 2}]}, Scenario)


def test_load_scenarios_reads_toml_and_names_the_bad_path(tmp_path: Path) -> None:
    """``load_scenarios`` reads [scenarios.NAME] tables; errors say file and place."""
    good = tmp_path / "good.toml"
    good.write_text(
        '[scenarios.slow]\nlatency = { dist = "fixed", seconds = 0.5 }\n'
        '[scenarios.flaky]\nfaults = [{ kind = "reset", rate = 0.5 }]\n'
    )
    loaded = load_scenarios(good)
    assert loaded == {
        "slow": Scenario(latency=Fixed(0.5)),
        "flaky": Scenario(faults=[Fault("reset", rate=0.5)]),
    }
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenarios.flaky]\nfaults = [{ kind = "explode" }]\n')
    with pytest.raises(ConfigError) as info:
        load_scenarios(bad)
    assert info.value.path == "$.scenarios.flaky.faults[0].kind"
    assert "bad.toml" in str(info.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[scenarios.x\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_scenarios(broken)


def test_select_fault_is_deterministic_and_listed_requests_always_fire() -> None:
    """``on_requests`` fire exactly; rates follow the seeded rng, first listed fault wins."""
    faults = [Fault("reset", on_requests=[2]), Fault("status", rate=0.5)]

    def pattern(seed: int) -> list[str | None]:
        rng = random.Random(seed)
        chosen = [select_fault(faults, n, rng) for n in range(1, 41)]
        return [f.kind if f else None for f in chosen]

    assert pattern(5) == pattern(5)
    assert pattern(5) != pattern(6)
    assert pattern(5)[1] == "reset"
    assert 8 < pattern(5).count("status") < 32
    assert select_fault([Fault("hang", on_requests=[1])], 2, random.Random(0)) is None


def test_schema_example_follows_types_enums_formats_and_refs() -> None:
    """Generated JSON fits the schema, including msgspec-style ``$ref``/``$defs`` schemas."""
    schema = msgspec.json.schema(User)
    user = msgspec.convert(schema_example(schema), User)
    assert user.address == Address(city="value", zip_code=1)
    assert (user.name, user.score, user.active, user.tags) == ("value", 1.5, True, [])
    assert (user.nickname, user.joined) == (None, None)  # defaults are used as they are
    assert schema_example(WEATHER_TOOL_SCHEMA) == {"city": "value", "unit": "celsius", "days": 1}
    assert schema_example({"type": "integer", "minimum": 5}) == 5
    assert schema_example({"type": "array", "minItems": 2, "items": {"type": "number"}}) == [
        1.5,
        1.5,
    ]


@given(st.text())
def test_split_words_joins_back_to_the_text(text: str) -> None:
    """Streamed word chunks keep their spaces: joined, they are the reply."""
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert len(pieces) == max(len(text.split()), 1 if text else 0)


def test_plan_reply_chooses_tools_truncates_and_stops() -> None:
    """Tool choice rules, max_tokens (in words) and stop sequences shape the plan."""
    scenario = Scenario()
    tools = [OfferedTool("search", {}), OfferedTool("get_weather", WEATHER_TOOL_SCHEMA)]
    echo = plan_reply(ChatView(last_user_text="a b c d", input_tokens=9), scenario)
    assert (echo.text, echo.finish, echo.output_tokens) == ("echo: a b c d", "stop", 5)
    assert "".join(echo.chunks) == echo.text
    cut = plan_reply(ChatView(last_user_text="a b c d", max_tokens=2), scenario)
    assert (cut.text, cut.finish) == ("echo: a", "length")
    stopped = plan_reply(ChatView(last_user_text="a b c d", stop=["x", " c"]), scenario)
    assert (stopped.text, stopped.finish, stopped.stop_sequence) == (
        "echo: a b",
        "stop_sequence",
        " c",
    )
    mentioned = ChatView(mentions="weather? use get_weather", tools=tools)
    assert plan_reply(mentioned, scenario).tool_name == "get_weather"
    assert plan_reply(ChatView(mentions="hi", tools=tools), scenario).tool_name is None
    forced = ChatView(mentions="hi", tools=tools, tool_choice="tool", forced_tool="get_weather")
    plan = plan_reply(forced, scenario)
    assert plan.finish == "tool_use"
    assert plan.tool_input == {"city": "value", "unit": "celsius", "days": 1}
    assert len(plan.chunks) >= 2
    assert "".join(plan.chunks) == json.dumps(plan.tool_input)
    assert (
        plan_reply(ChatView(mentions="hi", tools=tools, tool_choice="any"), scenario).tool_name
        == "search"
    )
    none = ChatView(mentions="get_weather", tools=tools, tool_choice="none")
    assert plan_reply(none, scenario).tool_name is None
    after_tool = ChatView(tool_result="18C", tools=tools)
    assert plan_reply(after_tool, scenario).text == "tool result: 18C"


def test_header_formats_match_the_vendors() -> None:
    """OpenAI reset headers are Go durations; retry-after is seconds, fractional if needed."""
    assert _go_duration(0.02) == "20ms"
    assert _go_duration(1.5) == "1.5s"
    assert _go_duration(360) == "6m0s"
    assert _go_duration(3725) == "1h2m5s"
    assert _go_duration(0) == "0s"
    assert (_format_seconds(2.0), _format_seconds(0.05)) == ("2", "0.05")


# --------------------------------------------------------------------------- OpenAI wire


async def test_openai_json_reply_echoes_with_usage_and_cached_tokens(
    client: httpx.AsyncClient,
) -> None:
    """A non-streaming chat completion: echo, ids, Content-Length, usage with cached tokens."""
    async with open_fake_upstream({"cache": Scenario(cached_tokens=5)}) as up:
        r = await oa_post(client, up, "cache", oa_chat("hello big world"))
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["x-request-id"].startswith("req_")
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hello big world",
        "refusal": None,
        "annotations": [],
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    # ceil(len("hello big world") / 4) + 4 * 1 message
    assert body["usage"]["prompt_tokens"] == 8
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == 12
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    record = up.requests[0]
    assert (record.scenario, record.method, record.path) == (
        "cache",
        "POST",
        "/cache/v1/chat/completions",
    )
    assert record.body == oa_chat("hello big world")
    assert (record.outcome, record.status, record.headers["authorization"]) == (
        "completed",
        200,
        "Bearer sk-test",
    )


async def test_openai_stream_chunks_join_to_the_reply(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """SSE stream: role chunk, word chunks, finish chunk, usage chunk when asked, [DONE]."""
    upstream.set_scenario("s", Scenario(chunk_words=2))
    body = oa_chat("one two three four", stream=True, stream_options={"include_usage": True})
    async with client.stream(
        "POST", upstream.base_url("s", "openai") + "/chat/completions", headers=OA_AUTH, json=body
    ) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"].startswith("text/event-stream")
        text = (await r.aread()).decode()
    payloads = sse_data(text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert contents == ["echo: one", " two three", " four"]
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])

    r = await oa_post(client, upstream, "s", oa_chat("x", stream=True))
    plain = [json.loads(p) for p in sse_data(r.text)[:-1]]
    assert all("usage" not in c for c in plain)
    assert plain[-1]["choices"][0]["finish_reason"] == "stop"


async def test_openai_tool_call_json_and_stream(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A mentioned tool is called: JSON-string arguments, streamed as ≥2 fragments."""
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}}
    ]
    body = oa_chat("what is the weather? call get_weather", tools=tools)
    r = await oa_post(client, upstream, "t", body)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {
        "city": "value",
        "unit": "celsius",
        "days": 1,
    }

    r = await oa_post(client, upstream, "t", {**body, "stream": True})
    chunks = [json.loads(p) for p in sse_data(r.text)[:-1]]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert first["id"].startswith("call_")
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[1:-1]
    ]
    assert len(fragments) >= 2
    assert json.loads("".join(fragments)) == {"city": "value", "unit": "celsius", "days": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    forced = oa_chat(
        "hi", tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    assert (await oa_post(client, upstream, "t", forced)).json()["choices"][0]["message"][
        "tool_calls"
    ]
    unforced = oa_chat("hi", tools=tools)
    assert (await oa_post(client, upstream, "t", unforced)).json()["choices"][0]["message"][
        "content"
    ] == "echo: hi"


async def test_structured_output_is_generated_from_the_schema(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """OpenAI json_schema / Anthropic output_config.format replies with a fitting JSON object."""
    schema = msgspec.json.schema(Answer)
    response_format = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": schema}}
    r = await oa_post(client, upstream, "j", oa_chat(response_format=response_format))
    content = r.json()["choices"][0]["message"]["content"]
    assert msgspec.json.decode(content, type=Answer) == Answer("value", 1.5)

    r = await oa_post(client, upstream, "j", oa_chat(response_format={"type": "json_object"}))
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {
        "reply": "echo: hello big world"
    }

    output_config = {"format": {"type": "json_schema", "schema": schema}}
    r = await an_post(client, upstream, "j", an_chat(output_config=output_config, stream=True))
    text = "".join(d["delta"]["text"] for e, d in sse_events(r.text) if e == "content_block_delta")
    assert msgspec.json.decode(text, type=Answer) == Answer("value", 1.5)


async def test_max_tokens_and_stop_sequences_cut_the_reply(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Too many words: cut, "length" / "max_tokens"; a stop sequence ends the reply early."""
    r = await oa_post(client, upstream, "m", oa_chat("a b c d e", max_completion_tokens=3))
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("echo: a b", "length")
    r = await oa_post(client, upstream, "m", oa_chat("a b c d e", max_tokens=2))
    assert r.json()["choices"][0]["message"]["content"] == "echo: a"
    r = await an_post(client, upstream, "m", an_chat("a b c d e", max_tokens=3))
    assert (r.json()["content"][0]["text"], r.json()["stop_reason"]) == ("echo: a b", "max_tokens")
    r = await an_post(client, upstream, "m", an_chat("a b c d e", stop_sequences=[" c"]))
    assert r.json()["content"][0]["text"] == "echo: a b"
    assert (r.json()["stop_reason"], r.json()["stop_sequence"]) == ("stop_sequence", " c")
    r = await an_post(client, upstream, "m", an_chat("a b c d e"), "/v1/messages/count_tokens")
    assert r.json() == {"input_tokens": 7}


async def test_embeddings_are_deterministic_unit_vectors(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Same input, same vector; ``dimensions`` honoured; base64 is little-endian float32."""
    r = await oa_post(
        client, upstream, "e", {"model": "emb", "input": ["a", "b", "a"]}, "/embeddings"
    )
    body = r.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert len(vectors[0]) == 8
    assert vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-9
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    r = await oa_post(
        client,
        upstream,
        "e",
        {"model": "emb", "input": "a", "dimensions": 4, "encoding_format": "base64"},
        "/embeddings",
    )
    packed = base64.b64decode(r.json()["data"][0]["embedding"])
    decoded = struct.unpack("<4f", packed)
    r = await oa_post(
        client, upstream, "e", {"model": "emb", "input": "a", "dimensions": 4}, "/embeddings"
    )
    assert decoded == pytest.approx(r.json()["data"][0]["embedding"], rel=1e-6)


async def test_models_endpoint_answers_in_the_format_the_headers_ask_for(
    client: httpx.AsyncClient,
) -> None:
    """/v1/models is OpenAI's list, or Anthropic's page when anthropic-version is sent."""
    async with open_fake_upstream({"m": Scenario(models=["a", "b"])}) as up:
        r = await client.get(up.base_url("m", "openai") + "/models", headers=OA_AUTH)
        assert r.json()["object"] == "list"
        assert [m["id"] for m in r.json()["data"]] == ["a", "b"]
        r = await client.get(up.base_url("m", "anthropic") + "/v1/models", headers=AN_AUTH)
        assert r.json()["data"][0] == {
            "type": "model",
            "id": "a",
            "display_name": "a",
            "created_at": "2024-01-01T00:00:00Z",
        }
        assert (r.json()["first_id"], r.json()["last_id"], r.json()["has_more"]) == (
            "a",
            "b",
            False,
        )
        r = await client.get(up.base_url("m", "openai") + "/models/zzz", headers=OA_AUTH)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")


# --------------------------------------------------------------------------- Anthropic wire


async def test_anthropic_json_reply_and_usage(client: httpx.AsyncClient) -> None:
    """Messages JSON: text block, end_turn, cache reads taken out of input_tokens."""
    async with open_fake_upstream({"c": Scenario(cached_tokens=3)}) as up:
        body = an_chat("hello big world", system="be terse")
        r = await an_post(client, up, "c", body)
    assert r.status_code == 200
    assert r.headers["request-id"].startswith("req_")
    msg = r.json()
    assert msg["id"].startswith("msg_")
    assert msg["type"] == "message"
    assert msg["role"] == "assistant"
    assert msg["content"] == [{"type": "text", "text": "echo: hello big world"}]
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("end_turn", None)
    # ceil((8 + 15) / 4) + 4 * (1 message + 1 system) = 14, of which 3 were cached
    assert msg["usage"]["input_tokens"] == 11
    assert msg["usage"]["cache_read_input_tokens"] == 3
    assert msg["usage"]["output_tokens"] == 4


async def test_anthropic_stream_follows_the_event_order(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """message_start, ping, block start/deltas/stop, message_delta (cumulative), message_stop."""
    r = await an_post(client, upstream, "s", an_chat("one two", stream=True))
    events = sse_events(r.text)
    names = [e for e, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["usage"]["input_tokens"] == 6
    text = "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta")
    assert text == "echo: one two"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3


async def test_anthropic_tool_use_json_and_stream(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """tool_use block with an input object; streamed as several input_json_delta fragments."""
    tools = [{"name": "get_weather", "input_schema": WEATHER_TOOL_SCHEMA}]
    body = an_chat("hi", tools=tools, tool_choice={"type": "any"})
    msg = (await an_post(client, upstream, "t", body)).json()
    assert msg["stop_reason"] == "tool_use"
    block = msg["content"][0]
    assert block["type"] == "tool_use"
    assert block["id"].startswith("toolu_")
    assert block["input"] == {"city": "value", "unit": "celsius", "days": 1}

    events = sse_events((await an_post(client, upstream, "t", {**body, "stream": True})).text)
    assert events[2][1]["content_block"] == {
        "type": "tool_use",
        "id": events[2][1]["content_block"]["id"],
        "name": "get_weather",
        "input": {},
    }
    fragments = [d["delta"]["partial_json"] for e, d in events if e == "content_block_delta"]
    assert len(fragments) >= 2
    assert json.loads("".join(fragments)) == block["input"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    history = an_chat("hi", tools=tools)
    history["messages"] += [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}],
        },
    ]
    msg = (await an_post(client, upstream, "t", history)).json()
    assert msg["content"] == [{"type": "text", "text": "tool result: 18C"}]


# --------------------------------------------------------------------------- request errors


async def test_request_errors_use_each_vendors_shape(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """401 without a key, 400 for bad JSON / missing max_tokens, 404 for unknown paths."""
    oa_url = upstream.base_url("e", "openai") + "/chat/completions"
    an_url = upstream.base_url("e", "anthropic") + "/v1/messages"
    r = await client.post(oa_url, json=oa_chat())
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = await client.post(an_url, headers={"anthropic-version": "2023-06-01"}, json=an_chat())
    assert (r.status_code, r.json()["type"], r.json()["error"]["type"]) == (
        401,
        "error",
        "authentication_error",
    )
    r = await client.post(oa_url, headers=OA_AUTH, content=b"{not json")
    assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
    r = await client.post(an_url, headers=AN_AUTH, content=b"{not json")
    assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
    no_max = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post(an_url, headers=AN_AUTH, json=no_max)
    assert (r.status_code, r.json()["error"]["message"]) == (400, "max_tokens: Field required")
    r = await client.post(an_url, headers={"x-api-key": "k"}, json=an_chat())
    assert (r.status_code, r.json()["error"]["message"]) == (
        400,
        "anthropic-version: header is required",
    )
    r = await client.post(upstream.base_url("e", "openai") + "/nope", headers=OA_AUTH, json={})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Invalid URL (POST /e/v1/nope)"
    r = await client.get(upstream.base_url("e", "anthropic") + "/v1/nope", headers=AN_AUTH)
    assert (r.status_code, r.json()["error"]["type"]) == (404, "not_found_error")
    upstream.set_scenario("open", Scenario(require_auth=False))
    r = await client.post(upstream.base_url("open", "openai") + "/chat/completions", json=oa_chat())
    assert r.status_code == 200
    assert all(rec.outcome == "completed" for rec in upstream.requests)


async def test_context_window_errors_match_the_vendors(client: httpx.AsyncClient) -> None:
    """Over the window: OpenAI context_length_exceeded, Anthropic "prompt is too long"."""
    async with open_fake_upstream({"small": Scenario(context_window=10)}) as up:
        long_text = "x" * 100  # ceil(100 / 4) + 4 = 29 tokens
        r = await oa_post(client, up, "small", oa_chat(long_text))
        error = r.json()["error"]
        assert (r.status_code, error["code"], error["type"]) == (
            400,
            "context_length_exceeded",
            "invalid_request_error",
        )
        assert error["message"].startswith(
            "This model's maximum context length is 10 tokens. However, your messages resulted in 29 tokens"
        )
        r = await an_post(client, up, "small", an_chat(long_text))
        assert r.json()["error"] == {
            "type": "invalid_request_error",
            "message": "prompt is too long: 29 tokens > 10 maximum",
        }
        assert (await oa_post(client, up, "small", oa_chat("short"))).status_code == 200


# --------------------------------------------------------------------------- faults


async def test_429_carries_retry_after_and_ratelimit_headers(client: httpx.AsyncClient) -> None:
    """A 429 fault: retry-after (+ -ms for OpenAI) and well-formed rate-limit headers."""
    scenario = Scenario(faults=[Fault("status", status=429, retry_after=1.5, on_requests=[1, 2])])
    async with open_fake_upstream({"rl": scenario}) as up:
        r = await oa_post(client, up, "rl", oa_chat())
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("1.5", "1500")
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"] == "1.5s"
        assert int(r.headers["x-ratelimit-limit-requests"]) >= 1
        assert int(r.headers["x-ratelimit-limit-tokens"]) >= int(
            r.headers["x-ratelimit-remaining-tokens"]
        )
        assert GO_DURATION.match(r.headers["x-ratelimit-reset-tokens"])

        r = await an_post(client, up, "rl", an_chat())
        assert (r.status_code, r.json()["error"]["type"]) == (429, "rate_limit_error")
        assert r.headers["retry-after"] == "1.5"
        assert r.headers["anthropic-ratelimit-requests-remaining"] == "0"
        for kind in ("requests", "tokens"):
            reset = datetime.strptime(
                r.headers[f"anthropic-ratelimit-{kind}-reset"], "%Y-%m-%dT%H:%M:%SZ"
            )
            assert reset.replace(tzinfo=UTC) >= datetime.now(UTC).replace(microsecond=0)
            assert int(r.headers[f"anthropic-ratelimit-{kind}-limit"]) >= 1
        assert (await oa_post(client, up, "rl", oa_chat())).status_code == 200
        assert up.stats("rl").faults == {"status": 2}
        assert [rec.outcome for rec in up.requests] == ["fault:status", "fault:status", "completed"]


async def test_ratelimit_headers_count_down_on_success(client: httpx.AsyncClient) -> None:
    """With ratelimit_headers on, every success says how much is left, counting down."""
    scenario = Scenario(ratelimit_headers=True, ratelimit_requests=10, ratelimit_tokens=1000)
    async with open_fake_upstream({"rl": scenario}) as up:
        first = await oa_post(client, up, "rl", oa_chat())
        second = await oa_post(client, up, "rl", oa_chat())
        third = await an_post(client, up, "rl", an_chat())
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert (
        int(second.headers["x-ratelimit-remaining-tokens"])
        < int(first.headers["x-ratelimit-remaining-tokens"])
        < 1000
    )
    assert GO_DURATION.match(first.headers["x-ratelimit-reset-requests"])
    assert third.headers["anthropic-ratelimit-requests-remaining"] == "7"


@pytest.mark.parametrize(
    ("status", "kind"), [(500, "server_error"), (503, "service_unavailable_error")]
)
async def test_status_faults_answer_openai_error_bodies(
    client: httpx.AsyncClient, status: int, kind: str
) -> None:
    """5xx faults carry the vendor's error body, for streaming requests too."""
    async with open_fake_upstream(
        {"f": Scenario(faults=[Fault("status", status=status, rate=1.0)])}
    ) as up:
        r = await oa_post(client, up, "f", oa_chat(stream=True))
    assert (r.status_code, r.json()["error"]["type"]) == (status, kind)
    assert r.headers["content-type"] == "application/json"


async def test_reset_closes_the_socket_without_an_answer(client: httpx.AsyncClient) -> None:
    """A reset fault drops the connection: the client sees a transport error."""
    async with open_fake_upstream({"r": Scenario(faults=[Fault("reset", on_requests=[1])])}) as up:
        with pytest.raises(httpx.ReadError):  # ECONNRESET: an RST, not a clean close
            await oa_post(client, up, "r", oa_chat())
        assert (await oa_post(client, up, "r", oa_chat())).status_code == 200
        await wait_finished(up.requests[0])
        assert (up.requests[0].outcome, up.requests[0].status) == ("fault:reset", None)


async def test_hang_until_the_client_cancels_is_recorded_promptly(
    client: httpx.AsyncClient,
) -> None:
    """Cancelling a hung call closes its connection; the server records client_disconnected."""
    async with open_fake_upstream({"h": Scenario(faults=[Fault("hang", rate=1.0)])}) as up:
        with trio.move_on_after(0.1) as scope:
            await oa_post(client, up, "h", oa_chat())
        assert scope.cancelled_caught
        record = up.requests[0]
        cancelled_at = trio.current_time()
        await wait_finished(record)
        assert trio.current_time() - cancelled_at < 0.5
        assert (record.outcome, record.fault) == ("client_disconnected", "hang")
        stats = up.stats("h")
        assert (stats.requests, stats.client_disconnected, stats.in_flight, stats.faults) == (
            1,
            1,
            0,
            {"hang": 1},
        )


async def test_disconnect_during_latency_and_mid_stream_is_recorded(
    client: httpx.AsyncClient,
) -> None:
    """A client leaving while the server waits, or while it streams, ends the exchange."""
    scenarios = {
        "slow": Scenario(latency=Fixed(5.0)),
        "drip": Scenario(chunk_interval=0.05, reply=" ".join(["word"] * 100)),
    }
    async with open_fake_upstream(scenarios) as up:
        with trio.move_on_after(0.1):
            await oa_post(client, up, "slow", oa_chat())
        await wait_finished(up.requests[0])
        assert up.requests[0].outcome == "client_disconnected"

        url = up.base_url("drip", "anthropic") + "/v1/messages"
        async with client.stream("POST", url, headers=AN_AUTH, json=an_chat(stream=True)) as r:
            assert r.status_code == 200
            await trio.sleep(0.12)  # a few chunks in; leaving unread closes the connection
        await wait_finished(up.requests[1])
        assert (up.requests[1].outcome, up.requests[1].status) == ("client_disconnected", 200)
        assert up.stats("drip").client_disconnected == 1


async def test_midstream_error_follows_some_content(client: httpx.AsyncClient) -> None:
    """After ``after_chunks`` content chunks the vendor's in-stream error arrives."""
    fault = Fault("midstream_error", rate=1.0, after_chunks=1)
    async with open_fake_upstream({"m": Scenario(faults=[fault])}) as up:
        r = await oa_post(client, up, "m", oa_chat("a b c", stream=True))
        payloads = sse_data(r.text)
        assert json.loads(payloads[1])["choices"][0]["delta"]["content"] == "echo:"
        assert json.loads(payloads[2])["error"]["type"] == "server_error"
        assert len(payloads) == 3
        assert "[DONE]" not in payloads

        r = await an_post(client, up, "m", an_chat("a b c", stream=True))
        events = sse_events(r.text)
        assert [e for e, _ in events][-2:] == ["content_block_delta", "error"]
        assert events[-1][1]["error"] == {"type": "overloaded_error", "message": "Overloaded"}

        r = await oa_post(client, up, "m", oa_chat())  # not streaming: an error status instead
        assert r.status_code == 500
        assert [rec.outcome for rec in up.requests] == ["fault:midstream_error"] * 3


async def test_truncate_cuts_the_stream_without_its_terminator(client: httpx.AsyncClient) -> None:
    """A truncated stream ends mid-body: no [DONE], and the chunked body is incomplete."""
    fault = Fault("truncate", rate=1.0, after_chunks=2)
    async with open_fake_upstream({"t": Scenario(faults=[fault])}) as up:
        received = bytearray()
        url = up.base_url("t", "openai") + "/chat/completions"

        async def read_stream() -> None:
            body = oa_chat("a b c d", stream=True)
            async with client.stream("POST", url, headers=OA_AUTH, json=body) as r:
                async for chunk in r.aiter_bytes():
                    received.extend(chunk)

        with pytest.raises(httpx.RemoteProtocolError):
            await read_stream()
        payloads = sse_data(received.decode())
        assert len(payloads) == 3
        assert "[DONE]" not in payloads
        with pytest.raises(httpx.RemoteProtocolError):
            await an_post(client, up, "t", an_chat())
        await wait_finished(up.requests[1])
        assert [rec.outcome for rec in up.requests] == ["fault:truncate"] * 2


async def test_malformed_bodies_are_not_json(client: httpx.AsyncClient) -> None:
    """Malformed: a 200 with broken JSON, or one stream event whose data is broken."""
    async with open_fake_upstream(
        {"x": Scenario(faults=[Fault("malformed", rate=1.0, after_chunks=1)])}
    ) as up:
        r = await oa_post(client, up, "x", oa_chat())
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
        r = await an_post(client, up, "x", an_chat(stream=True))
        bad = []
        for payload in sse_data(r.text):
            try:
                json.loads(payload)
            except json.JSONDecodeError:
                bad.append(payload)
        assert len(bad) == 1
        assert "event: message_stop" in r.text


async def test_slow_drip_sends_the_body_a_few_bytes_at_a_time(client: httpx.AsyncClient) -> None:
    """Slow drip: the same body, in many small pieces, paced by chunk_interval."""
    fault = Fault("slow_drip", rate=1.0, drip_bytes=16)
    scenarios = {"d": Scenario(chunk_interval=0.002, faults=[fault]), "n": Scenario()}
    async with open_fake_upstream(scenarios) as up:
        started = trio.current_time()
        pieces = []
        url = up.base_url("d", "openai") + "/chat/completions"
        async with client.stream("POST", url, headers=OA_AUTH, json=oa_chat()) as r:
            async for piece in r.aiter_raw():
                pieces.append(piece)
        elapsed = trio.current_time() - started
        dripped = json.loads(b"".join(pieces))
        normal = (await oa_post(client, up, "n", oa_chat())).json()
        assert dripped["choices"] == normal["choices"]
        assert len(pieces) > 10
        assert elapsed >= 0.002 * (len(b"".join(pieces)) // 16 - 1)
        assert up.requests[0].outcome == "fault:slow_drip"


async def test_latency_and_chunk_interval_are_honoured(client: httpx.AsyncClient) -> None:
    """Headers wait for the latency; stream chunks are spaced by chunk_interval."""
    scenarios = {"l": Scenario(latency=Fixed(0.05)), "c": Scenario(chunk_interval=0.02)}
    async with open_fake_upstream(scenarios) as up:
        started = trio.current_time()
        await oa_post(client, up, "l", oa_chat())
        assert trio.current_time() - started >= 0.05
        started = trio.current_time()
        await oa_post(client, up, "c", oa_chat("a b c", stream=True))  # 4 content chunks
        assert trio.current_time() - started >= 3 * 0.02


async def test_fault_selection_is_deterministic_for_a_seed(client: httpx.AsyncClient) -> None:
    """The same seed and request order give the same faults; set_scenario replays them."""
    scenario = Scenario(faults=[Fault("status", status=503, rate=0.4)])

    async def statuses(seed: int) -> list[int]:
        async with open_fake_upstream({"p": scenario}, seed=seed) as up:
            first = [(await oa_post(client, up, "p", oa_chat())).status_code for _ in range(15)]
            up.set_scenario("p", scenario)
            again = [(await oa_post(client, up, "p", oa_chat())).status_code for _ in range(15)]
            assert again == first
            assert up.stats("p").requests == 30
            return first

    a = await statuses(1)
    assert a == await statuses(1)
    assert a != await statuses(2)
    assert 503 in a
    assert 200 in a


# --------------------------------------------------------------------------- server lifecycle


async def test_keep_alive_reuses_one_connection_and_exit_closes_it() -> None:
    """Sequential requests share a connection; leaving the block closes everything."""
    async with open_fake_upstream() as up, httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await oa_post(client, up, "k", oa_chat())).status_code == 200
        stats = up.stats("k")
        assert isinstance(stats, UpstreamStats)
        assert (stats.requests, stats.completed, stats.open_connections) == (3, 3, 1)
        with pytest.raises(AttributeError):
            stats.requests = 0  # type: ignore[misc]
    assert up.stats().open_connections == 0


async def test_raw_http_pipelining_100_continue_and_garbage() -> None:
    """h11 details: pipelining, Expect 100-continue, HEAD without a body, bad HTTP → 400."""
    body = json.dumps(oa_chat("x")).encode()
    request = (
        b"POST /p/v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer k\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    )
    async with open_fake_upstream() as up:
        port = int(up.url.rsplit(":", 1)[1])

        async def read_until(stream: trio.SocketStream, marker: bytes, count: int = 1) -> bytes:
            received = b""
            with trio.fail_after(2):
                while received.count(marker) < count:
                    received += await stream.receive_some(65536)
            return received

        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all((request + b"\r\n" + body) * 2)
            assert (await read_until(stream, b"echo: x", 2)).count(b"HTTP/1.1 200 OK") == 2

            await stream.send_all(request + b"expect: 100-continue\r\n\r\n")
            assert await read_until(stream, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(body)
            assert (await read_until(stream, b"echo: x")).startswith(b"HTTP/1.1 200 OK")

        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"HEAD /p/v1/models HTTP/1.1\r\nhost: t\r\n\r\n")
            head = await read_until(stream, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            assert (await read_until(stream, b"\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_default_scenario_and_unknown_names_echo(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Any scenario name works with defaults; /v1/... alone is the "default" scenario."""
    r = await client.post(upstream.url + "/v1/chat/completions", headers=OA_AUTH, json=oa_chat("x"))
    assert r.json()["choices"][0]["message"]["content"] == "echo: x"
    assert upstream.requests[0].scenario == "default"
    assert upstream.scenario("anything") == Scenario()
    with pytest.raises(ValueError, match="unknown wire format"):
        upstream.base_url("x", "cohere")


async def test_errors_in_the_block_are_not_wrapped_in_groups() -> None:
    """A user's exception leaves ``open_fake_upstream`` as itself, not an ExceptionGroup."""
    with pytest.raises(KeyError):
        async with open_fake_upstream():
            raise KeyError("mine")


async def test_serve_fake_upstream_runs_until_cancelled(client: httpx.AsyncClient) -> None:
    """``nursery.start(serve_fake_upstream)`` returns the running upstream (no recording)."""
    async with trio.open_nursery() as nursery:
        up = await nursery.start(
            partial(serve_fake_upstream, scenarios={"s": Scenario(reply="hi")})
        )
        r = await oa_post(client, up, "s", oa_chat())
        assert r.json()["choices"][0]["message"]["content"] == "hi"
        assert up.requests == []
        assert up.stats("s").completed == 1
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- official SDKs


async def test_openai_sdk_parses_json_streams_tools_and_usage() -> None:
    """The official OpenAI SDK reads our completions, streams, tool calls, usage, embeddings."""
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}}
    ]
    async with open_fake_upstream({"s": Scenario(cached_tokens=2)}) as up:

        def run() -> None:
            with openai.OpenAI(
                base_url=up.base_url("s", "openai"), api_key="sk-test", max_retries=0
            ) as sdk:
                done = sdk.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi you"}]
                )
                assert done.choices[0].message.content == "echo: hi you"
                assert done.usage is not None
                assert done.usage.prompt_tokens_details is not None
                assert done.usage.prompt_tokens_details.cached_tokens == 2

                text, usage = "", None
                for chunk in sdk.chat.completions.create(
                    model="gpt-test",
                    messages=[{"role": "user", "content": "a b c"}],
                    stream=True,
                    stream_options={"include_usage": True},
                ):
                    text += "".join(c.delta.content or "" for c in chunk.choices)
                    usage = chunk.usage or usage
                assert text == "echo: a b c"
                assert usage is not None
                assert usage.completion_tokens == 4

                args = ""
                with sdk.chat.completions.stream(
                    model="gpt-test",
                    messages=[{"role": "user", "content": "get_weather please"}],
                    tools=tools,
                ) as stream:
                    for event in stream:
                        if event.type == "tool_calls.function.arguments.delta":
                            args += event.arguments_delta
                    final = stream.get_final_completion()
                call = final.choices[0].message.tool_calls
                assert call is not None
                assert call[0].type == "function"
                assert call[0].function.name == "get_weather"
                assert json.loads(args) == json.loads(call[0].function.arguments)

                vectors = sdk.embeddings.create(model="emb", input=["a", "b"], dimensions=4)
                assert len(vectors.data[1].embedding) == 4
                assert [m.id for m in sdk.models.list()] == ["fake-model"]

        await in_thread(run)


async def test_anthropic_sdk_parses_json_streams_tools_and_usage() -> None:
    """The official Anthropic SDK reads our messages, event streams, tool_use and usage."""
    tools: Any = [{"name": "get_weather", "input_schema": WEATHER_TOOL_SCHEMA}]
    async with open_fake_upstream({"s": Scenario(cached_tokens=2)}) as up:

        def run() -> None:
            with anthropic.Anthropic(
                base_url=up.base_url("s", "anthropic"), api_key="k", max_retries=0
            ) as sdk:
                msg = sdk.messages.create(
                    model="c", max_tokens=50, messages=[{"role": "user", "content": "hi you"}]
                )
                assert msg.content[0].type == "text"
                assert msg.content[0].text == "echo: hi you"
                assert msg.usage.cache_read_input_tokens == 2

                with sdk.messages.stream(
                    model="c", max_tokens=50, messages=[{"role": "user", "content": "a b c"}]
                ) as stream:
                    text = "".join(stream.text_stream)
                    final = stream.get_final_message()
                assert text == "echo: a b c"
                assert final.usage.output_tokens == 4
                assert final.stop_reason == "end_turn"

                with sdk.messages.stream(
                    model="c",
                    max_tokens=50,
                    messages=[{"role": "user", "content": "weather?"}],
                    tools=tools,
                    tool_choice={"type": "tool", "name": "get_weather"},
                ) as stream:
                    final = stream.get_final_message()
                block = final.content[0]
                assert block.type == "tool_use"
                assert block.name == "get_weather"
                assert block.input == {"city": "value", "unit": "celsius", "days": 1}
                assert final.stop_reason == "tool_use"
                assert [m.id for m in sdk.models.list()] == ["fake-model"]

        await in_thread(run)


async def test_sdks_raise_their_own_errors_for_our_faults() -> None:
    """429 → RateLimitError, 529 → OverloadedError, in-stream errors → APIError."""
    scenarios = {
        "rl": Scenario(faults=[Fault("status", status=429, retry_after=0.5, rate=1.0)]),
        "ovl": Scenario(faults=[Fault("status", status=529, rate=1.0)]),
        "mid": Scenario(faults=[Fault("midstream_error", rate=1.0)]),
    }
    async with open_fake_upstream(scenarios) as up:

        def run() -> None:
            messages: Any = [{"role": "user", "content": "a b c d"}]

            def oa(name: str) -> openai.OpenAI:
                return openai.OpenAI(
                    base_url=up.base_url(name, "openai"), api_key="sk-test", max_retries=0
                )

            def an(name: str) -> anthropic.Anthropic:
                return anthropic.Anthropic(
                    base_url=up.base_url(name, "anthropic"), api_key="k", max_retries=0
                )

            with oa("rl") as sdk, pytest.raises(openai.RateLimitError) as oa_info:
                sdk.chat.completions.create(model="m", messages=messages)
            assert oa_info.value.code == "rate_limit_exceeded"
            assert oa_info.value.response.headers["retry-after-ms"] == "500"
            with an("rl") as sdk_an, pytest.raises(anthropic.RateLimitError):
                sdk_an.messages.create(model="c", max_tokens=9, messages=messages)
            with an("ovl") as sdk_an, pytest.raises(anthropic.InternalServerError) as an_info:
                sdk_an.messages.create(model="c", max_tokens=9, messages=messages)
            assert an_info.value.status_code == 529
            assert type(an_info.value).__name__ == "OverloadedError"
            with oa("mid") as sdk, pytest.raises(openai.APIError, match="Sorry about that"):
                for _ in sdk.chat.completions.create(model="m", messages=messages, stream=True):
                    pass
            with an("mid") as sdk_an, pytest.raises(anthropic.APIError, match="overloaded_error"):
                for _ in sdk_an.messages.create(
                    model="c", max_tokens=9, messages=messages, stream=True
                ):
                    pass

        await in_thread(run)
