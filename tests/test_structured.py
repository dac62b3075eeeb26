"""``router.structured()``: a type in, a validated instance out, on every provider kind.

Wire tests run each kind's real adapter over loopback against the fake upstream (the
mock kind in-process), on virtual time: the request carries the schema in the vendor's
form, a valid answer decodes to the instance, and an invalid or truncated answer fails
its attempt with ``InvalidOutput`` so the route falls over to the next target.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import (
    AllProvidersFailed,
    AnthropicProvider,
    AzureOpenAIProvider,
    ChatRequest,
    ChatResponse,
    Done,
    GeminiProvider,
    GroqProvider,
    InvalidOutput,
    InvalidRequest,
    Message,
    OllamaProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
    OpenRouterProvider,
    Provider,
    ResponseFormat,
    Secret,
    TextDelta,
    TogetherProvider,
    ToolCallStart,
    UnsupportedFeature,
)
from providers._gemini import openapi_schema
from providers.testing import FakeUpstream, MockProvider, Scenario, open_fake_upstream
from router import Router, Structured, open_router
from router._structured import output_schema, strict_form
from router.config import ProviderConfig, RetryConfig, RouteConfig, RouterConfig

KEY = "sk-test-STRUCTURED-0d9c8b7a6f5e4d3c"
NO_RETRY = RetryConfig(max_attempts=1)


class User(msgspec.Struct):
    """A person."""

    name: str
    age: int


class Address(msgspec.Struct):
    city: str
    zip: str | None = None


class Person(msgspec.Struct):
    name: str
    age: int = 0
    address: Address | None = None


class Tree(msgspec.Struct):
    """A recursive type."""

    label: str
    children: list[Tree]


VALID = {"name": "value", "age": 1}  # the fake upstream's example of User's schema
WRONG_TYPE = '{"name": 7, "age": 1}'
MISSING = '{"name": "Ann"}'
TRUNCATED = '{"name": "Ann", "ag'

# --------------------------------------------------------------------------- providers by kind

Make = Callable[[str, FakeUpstream, httpx.AsyncClient], Provider]


def _simple(cls: type[Any], vendor: str, **extra: Any) -> Make:
    def make(name: str, up: FakeUpstream, client: httpx.AsyncClient) -> Provider:
        provider: Provider = cls(
            name=name,
            api_key=Secret(KEY),
            base_url=up.base_url(name, vendor),
            client=client,
            **extra,
        )
        return provider

    return make


def _azure(name: str, up: FakeUpstream, client: httpx.AsyncClient) -> Provider:
    return AzureOpenAIProvider(
        name=name,
        api_key=Secret(KEY),
        endpoint=up.base_url(name, "azure"),
        api_version="2024-10-21",
        client=client,
    )


def _ollama(name: str, up: FakeUpstream, client: httpx.AsyncClient) -> Provider:
    return OllamaProvider(name=name, base_url=up.base_url(name, "ollama"), client=client)


#: kind label -> (config kind, adapter factory); "gemini-legacy" sends responseSchema.
KINDS: dict[str, tuple[str, Make]] = {
    "openai": ("openai", _simple(OpenAIProvider, "openai")),
    "azure": ("azure", _azure),
    "anthropic": ("anthropic", _simple(AnthropicProvider, "anthropic")),
    "gemini": ("gemini", _simple(GeminiProvider, "gemini")),
    "gemini-legacy": ("gemini", _simple(GeminiProvider, "gemini", json_schema=False)),
    "ollama": ("ollama", _ollama),
    "openrouter": ("openrouter", _simple(OpenRouterProvider, "openai")),
    "groq": ("groq", _simple(GroqProvider, "openai")),
    "together": ("together", _simple(TogetherProvider, "openai")),
    "openai-compatible": ("openai-compatible", _simple(OpenAICompatibleProvider, "openai")),
}
ALL_KINDS = [*KINDS, "mock"]
_OPENAI_FORM = {"openai", "azure", "openrouter", "groq", "together", "openai-compatible"}


@asynccontextmanager
async def structured_router(
    providers: dict[str, str],
    *,
    scenarios: dict[str, Scenario] | None = None,
    mock_replies: dict[str, list[str]] | None = None,
    routes: dict[str, list[str]] | None = None,
    retry: RetryConfig = NO_RETRY,
) -> AsyncIterator[tuple[FakeUpstream, Router, dict[str, Provider]]]:
    """A fake upstream and a router over it: provider ``name`` (of ``providers[name]``'s
    kind label) talks to scenario ``name``; mocks answer ``mock_replies[name]`` then the
    schema's example."""
    async with (
        open_fake_upstream(scenarios or {}) as up,
        httpx.AsyncClient(timeout=60.0) as client,
    ):
        adapters: dict[str, Provider] = {}
        configs: dict[str, ProviderConfig] = {}
        for name, label in providers.items():
            if label == "mock":
                adapters[name] = MockProvider(
                    name=name, responses=(mock_replies or {}).get(name, [])
                )
                kind = "mock"
            else:
                kind, make = KINDS[label]
                adapters[name] = make(name, up, client)
            configs[name] = ProviderConfig(kind=kind, retry=retry)  # type: ignore[arg-type]
        config = RouterConfig(
            providers=configs,
            routes={alias: RouteConfig(targets=t) for alias, t in (routes or {}).items()},
        )
        async with open_router(config, providers=adapters, seed=1) as router:
            yield up, router, adapters


def ask(model: str, text: str = "Who is Ann?", **kw: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)], **kw)


def sent_body(up: FakeUpstream, scenario: str) -> Any:
    bodies = [r.body for r in up.requests if r.scenario == scenario]
    assert bodies, f"nothing reached scenario {scenario!r}"
    return bodies[-1]


def assert_vendor_form(label: str, body: Any, fmt: ResponseFormat) -> None:
    """The request carries ``fmt`` in ``label``'s wire form."""
    schema = fmt.schema
    if label in _OPENAI_FORM:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": fmt.name, "schema": schema, "strict": fmt.strict},
        }
    elif label == "anthropic":
        assert body["tools"] == [{"name": fmt.name, "input_schema": schema}]
        assert body["tool_choice"] == {"type": "tool", "name": fmt.name}
        assert "output_config" not in body
    elif label == "gemini":
        assert body["generationConfig"] == {
            "responseMimeType": "application/json",
            "responseJsonSchema": schema,
        }
    elif label == "gemini-legacy":
        assert body["generationConfig"] == {
            "responseMimeType": "application/json",
            "responseSchema": openapi_schema(schema or {}),
        }
        assert "$defs" not in msgspec.json.encode(body["generationConfig"]).decode()
    elif label == "ollama":
        assert body["format"] == schema
    else:  # pragma: no cover - every label is listed above
        raise AssertionError(label)


# --------------------------------------------------------------------------- every kind, on the wire


@pytest.mark.parametrize("label", ALL_KINDS)
async def test_valid_answer_decodes_to_the_instance_in_the_vendors_form(
    label: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Each kind: the schema goes out in the vendor's form; the answer is a User."""
    async with structured_router({"p": label}) as (up, router, adapters):
        result = await router.structured_response(ask("p:m1"), User)
        assert result.value == User(**VALID)
        assert isinstance(result, Structured)
        assert result.response.provider == "p"
        assert [a.outcome for a in result.response.attempts] == ["won"]
        fmt = output_schema(User).format
        assert fmt.name == "User"
        assert fmt.strict
        if label == "mock":
            mock = adapters["p"]
            assert isinstance(mock, MockProvider)
            assert mock.calls[-1].request.response_format == fmt
        else:
            assert_vendor_form(label, sent_body(up, "p"), fmt)
        assert await router.structured(ask("p:m1"), User) == User(**VALID)


@pytest.mark.parametrize("label", ALL_KINDS)
@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (WRONG_TYPE, "Expected `str`, got `int` - at `$.name`"),
        (MISSING, "Object missing required field `age`"),
        (TRUNCATED, None),
    ],
    ids=["wrong-type", "missing-field", "truncated"],
)
async def test_invalid_answer_fails_the_attempt_and_falls_over(
    label: str, bad: str, problem: str | None, autojump_clock: trio.testing.MockClock
) -> None:
    """An invalid or truncated answer fails its attempt (InvalidOutput, with the
    validator's message); the route falls over to a target that answers validly."""
    async with structured_router(
        {"bad": label, "good": "openai"},
        scenarios={"bad": Scenario(reply=bad)},
        mock_replies={"bad": [bad]},
        routes={"r": ["bad:m1", "good:m1"]},
    ) as (_, router, _adapters):
        result = await router.structured_response(ask("r"), User)
        assert result.value == User(**VALID)
        first, second = result.response.attempts
        assert (first.provider, first.outcome, first.error_type) == (
            "bad",
            "failed",
            "InvalidOutput",
        )
        assert (second.provider, second.kind, second.outcome) == ("good", "fallback", "won")
        assert first.reason is not None
        assert "does not match User" in first.reason
        if problem is not None and not (label == "anthropic" and bad == TRUNCATED):
            assert problem in first.reason
        # The answer itself is never quoted in the trace.
        assert "Ann" not in first.reason
        assert first.usage is not None  # the invalid answer's usage is on its attempt


@pytest.mark.parametrize("label", ALL_KINDS)
async def test_every_target_invalid_raises_the_typed_errors(
    label: str, autojump_clock: trio.testing.MockClock
) -> None:
    """All targets answer invalid JSON: AllProvidersFailed of InvalidOutput each; a lone
    target raises InvalidOutput itself, with a short scrubbed excerpt."""
    async with structured_router(
        {"a": label, "b": label},
        scenarios={"a": Scenario(reply=TRUNCATED), "b": Scenario(reply=WRONG_TYPE)},
        mock_replies={"a": [TRUNCATED], "b": [WRONG_TYPE, WRONG_TYPE]},
        routes={"r": ["a:m1", "b:m1"]},
    ) as (_, router, _adapters):
        with pytest.raises(AllProvidersFailed) as caught:
            await router.structured(ask("r"), User)
        errors = caught.value.errors
        assert [type(e) for e in errors] == [InvalidOutput, InvalidOutput]
        assert [a.error_type for a in caught.value.attempts] == ["InvalidOutput"] * 2
        assert caught.value.retryable
        with pytest.raises(InvalidOutput) as lone:
            await router.structured(ask("b:m1"), User)
        exc = lone.value
        assert exc.provider == "b"
        assert exc.retryable
        assert "Expected `str`, got `int` - at `$.name`" in exc.validation
        assert len(exc.excerpt) <= 200
        assert KEY not in str(exc) + repr(exc) + exc.excerpt
        assert [a.outcome for a in exc.attempts] == ["failed"]


# --------------------------------------------------------------------------- retries, health, limits


async def test_invalid_answer_is_retried_on_its_target_and_spares_health(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With retries configured, an invalid answer is retried on the same target after
    the backoff; it counts as neither a provider failure nor a breaker failure."""
    async with structured_router(
        {"m": "mock"},
        mock_replies={"m": [WRONG_TYPE]},
        retry=RetryConfig(max_attempts=2, initial_backoff=1.0),
    ) as (_, router, _adapters):
        result = await router.structured_response(ask("m:m1"), User)
        assert result.value == User(**VALID)
        (attempt,) = result.response.attempts
        assert (attempt.outcome, attempt.retries) == ("won", 1)
        assert 0.0 <= trio.current_time() <= 1.0  # one full-jitter backoff, capped at 1 s
        stats = router.statistics()
        assert (stats.retries, stats.providers["m"].failed) == (1, 0)
        assert stats.providers["m"].breaker == "closed"
        assert router.health()["m"].status == "healthy"


async def test_a_hedged_race_validates_in_each_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hedged route: the primary's invalid answer at t=1 fails its attempt and starts the
    fallback at once (not at the 5 s hedge delay); the fallback's valid answer wins at t=2."""
    from providers.testing import MockResponse
    from router.config import HedgeConfig

    slow_bad = MockProvider(name="a", responses=[MockResponse(text=WRONG_TYPE, latency=1.0)])
    slow_good = MockProvider(
        name="b", responses=[MockResponse(text='{"name": "Bo", "age": 2}', latency=1.0)]
    )
    config = RouterConfig(
        providers={n: ProviderConfig(kind="mock", retry=NO_RETRY) for n in ("a", "b")},
        routes={
            "h": RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(max_attempts=2, delay=5.0))
        },
    )
    async with open_router(config, providers={"a": slow_bad, "b": slow_good}) as router:
        result = await router.structured_response(ask("h"), User)
        assert result.value == User(name="Bo", age=2)
        assert trio.current_time() == 2.0
        first, second = result.response.attempts
        assert (first.outcome, first.error_type, first.end) == ("failed", "InvalidOutput", 1.0)
        assert (second.kind, second.start, second.outcome) == ("fallback", 1.0, "won")


async def test_cut_at_max_tokens_says_so(autojump_clock: trio.testing.MockClock) -> None:
    """An answer cut at its token limit fails with a message naming finish_reason 'length'."""
    async with structured_router({"p": "openai"}) as (_, router, _adapters):
        with pytest.raises(InvalidOutput) as caught:
            await router.structured(ask("p:m1", max_tokens=2), User)
        assert "finish_reason 'length'" in str(caught.value)


async def test_gemini_legacy_cannot_express_a_recursive_type_so_the_route_falls_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """responseSchema has no references: a recursive type is UnsupportedFeature before
    anything is sent, and the route falls over to a target that takes JSON Schema."""

    async with structured_router(
        {"g": "gemini-legacy", "o": "openai"}, routes={"r": ["g:m1", "o:m1"]}
    ) as (up, router, _adapters):
        result = await router.structured_response(ask("r"), Tree)
        assert result.value == Tree(label="value", children=[])
        first = result.response.attempts[0]
        assert (first.provider, first.error_type) == ("g", "UnsupportedFeature")
        assert [r.scenario for r in up.requests] == ["o"]


async def test_gemini_legacy_refuses_an_unconverted_schema_on_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The fake upstream refuses $ref/additionalProperties in responseSchema as Gemini does
    (so the adapter's conversion is what makes structured output work there)."""
    async with (
        open_fake_upstream({}) as up,
        httpx.AsyncClient() as client,
    ):
        url = up.base_url("g", "gemini") + "/models/m1:generateContent"
        schema = output_schema(User).schema
        body = {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": schema},
        }
        r = await client.post(url, json=body, headers={"x-goog-api-key": KEY})
        assert r.status_code == 400
        assert 'Unknown name "additionalProperties"' in r.json()["error"]["message"]


async def test_openai_strict_needs_a_closed_schema(autojump_clock: trio.testing.MockClock) -> None:
    """A free-form mapping cannot be strict: it goes with strict false, still validated."""

    class Tags(msgspec.Struct):
        counts: dict[str, int]

    async with structured_router({"p": "openai"}) as (up, router, _adapters):
        assert await router.structured(ask("p:m1"), Tags) == Tags(counts={})
        sent = sent_body(up, "p")["response_format"]["json_schema"]
        assert sent["strict"] is False


async def test_anthropic_stream_of_a_forced_structured_tool_is_text() -> None:
    """Anthropic streams the forced tool's input as text deltas (no tool-call events)."""
    async with (
        open_fake_upstream({"s": Scenario(reply='{"name": "Ann", "age": 3}')}) as up,
        httpx.AsyncClient() as client,
    ):
        p = AnthropicProvider(api_key=KEY, base_url=up.base_url("s", "anthropic"), client=client)
        request = ask("m1", response_format=output_schema(User).format)
        async with p.stream(request) as events:
            got = [e async for e in events]
        assert up.requests[-1].body["tool_choice"] == {"type": "tool", "name": "User"}
        assert not any(isinstance(e, ToolCallStart) for e in got)
        text = "".join(e.text for e in got if isinstance(e, TextDelta))
        done = got[-1]
        assert isinstance(done, Done)
        assert text == done.response.text
        assert msgspec.json.decode(text, type=User) == User(name="Ann", age=3)
        assert (done.response.finish_reason, done.response.tool_calls) == ("stop", [])


async def test_anthropic_with_tools_of_its_own_uses_output_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request with its own tools keeps them callable: structured output goes as
    output_config.format instead of a forced tool."""
    from providers import ToolSpec

    tool = ToolSpec(name="lookup", parameters={"type": "object", "properties": {}})
    async with structured_router({"a": "anthropic"}) as (up, router, _adapters):
        value = await router.structured(ask("a:m1", tools=[tool], tool_choice="none"), User)
        assert value == User(**VALID)
        body = sent_body(up, "a")
        assert body["output_config"]["format"]["schema"] == output_schema(User).schema
        assert [t["name"] for t in body["tools"]] == ["lookup"]


# --------------------------------------------------------------------------- what it accepts


@dataclass
class Point:
    x: int
    y: int


class Pair(TypedDict):
    left: str
    right: str


@pytest.mark.parametrize(
    ("schema", "reply", "expected"),
    [
        (Point, '{"x": 1, "y": 2}', Point(1, 2)),
        (Pair, '{"left": "a", "right": "b"}', {"left": "a", "right": "b"}),
        (list[int], '{"value": [1, 2]}', [1, 2]),
        (User, '```json\n{"name": "Ann", "age": 3}\n```', User("Ann", 3)),
        ({"type": "object", "required": ["a"]}, '{"a": [1]}', {"a": [1]}),
        ({"type": "array"}, '{"value": [true]}', [True]),
    ],
    ids=["dataclass", "typeddict", "wrapped-list", "code-fence", "dict-schema", "dict-array"],
)
async def test_types_dataclasses_typeddicts_and_schemas(
    schema: Any, reply: str, expected: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """Dataclasses, TypedDicts, non-object roots (wrapped as "value") and JSON Schema dicts."""
    async with structured_router({"m": "mock"}, mock_replies={"m": [reply]}) as (_, router, _a):
        assert await router.structured(ask("m:m1"), schema) == expected


@pytest.mark.parametrize(
    ("schema", "reply", "problem"),
    [
        ({"type": "object", "required": ["a"]}, '{"b": 1}', "missing required field `a`"),
        ({"type": "object"}, "[1]", "Expected `object`, got `array`"),
        ({"type": "integer"}, '{"value": true}', "Expected `integer`, got `boolean`"),
    ],
)
async def test_a_schema_dict_checks_root_type_and_required(
    schema: dict[str, Any], reply: str, problem: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A JSON Schema dict: the root's type and its required properties are checked."""
    async with structured_router({"m": "mock"}, mock_replies={"m": [reply]}) as (_, router, _a):
        with pytest.raises(InvalidOutput, match="does not match") as caught:
            await router.structured(ask("m:m1"), schema)
        assert problem in caught.value.validation


async def test_bad_calls_are_refused_before_sending(autojump_clock: trio.testing.MockClock) -> None:
    """A type msgspec cannot describe, or a request with its own response_format, is an
    InvalidRequest naming the problem; nothing is sent."""
    async with structured_router({"m": "mock"}) as (_, router, adapters):
        with pytest.raises(InvalidRequest, match="JSON Schema"):
            await router.structured(ask("m:m1"), object)

        class Dangling(msgspec.Struct):
            other: Undefined  # type: ignore[name-defined]  # noqa: F821

        with pytest.raises(InvalidRequest, match="JSON Schema"):
            await router.structured(ask("m:m1"), Dangling)
        with pytest.raises(InvalidRequest, match="response_format"):
            fmt = ResponseFormat.json_object()
            await router.structured(ask("m:m1", response_format=fmt), User)
        mock = adapters["m"]
        assert isinstance(mock, MockProvider)
        assert mock.calls == []


# --------------------------------------------------------------------------- the schema, purely


def test_strict_form_closes_every_object_and_requires_every_property() -> None:
    """Strict form: additionalProperties false and all properties required on every
    object, defaults dropped; a free-form mapping is reported as not expressible."""
    target = output_schema(Person)
    schema = target.schema
    assert target.format.strict
    assert "$ref" not in schema
    assert schema["type"] == "object"
    assert schema["required"] == ["name", "age", "address"]
    assert schema["additionalProperties"] is False
    address = schema["$defs"]["Address"]
    assert address["required"] == ["city", "zip"]
    assert address["additionalProperties"] is False
    assert "default" not in msgspec.json.encode(schema).decode()
    assert "Person" not in schema["$defs"]  # the root was inlined, not kept twice
    assert output_schema(Person) is target  # compiled once per type
    assert strict_form({"type": "object", "additionalProperties": {"type": "integer"}})[1] is False
    assert strict_form({"type": "object"})[1] is False


_leaf_schemas = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer", "default": 1},
        {"type": ["string", "null"]},
        {"type": "boolean", "title": "Flag"},
        {"enum": ["a", "b"]},
        {"const": 3},
    ]
)
_field_names = st.from_regex(r"[a-z]{1,6}", fullmatch=True)


def _extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(
            lambda p: {"type": "object", "properties": p},
            st.dictionaries(_field_names, inner, max_size=3),
        ),
        st.builds(lambda i: {"type": "array", "items": i, "minItems": 0}, inner),
        st.builds(lambda i: {"anyOf": [i, {"type": "null"}], "default": None}, inner),
    )


schemas = st.recursive(_leaf_schemas, _extend, max_leaves=8)


def _nodes(schema: Any) -> list[dict[str, Any]]:
    """Every schema node of ``schema`` (itself, properties, items, anyOf branches)."""
    out, stack = [], [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            stack.extend((node.get("properties") or {}).values())
            stack.extend(node.get("anyOf") or [])
            if isinstance(node.get("items"), dict):
                stack.append(node["items"])
    return out


@settings(max_examples=200, deadline=None)
@given(schema=schemas)
def test_strict_form_and_gemini_subset_invariants(schema: dict[str, Any]) -> None:
    """Invariants: strict_form is idempotent, leaves no default, closes every object and
    requires all its properties; openapi_schema of it keeps only the subset's keys, with
    upper-case single types."""
    strict, expressible = strict_form(schema)
    assert expressible
    assert strict_form(strict) == (strict, True)
    for node in _nodes(strict):
        assert "default" not in node
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"])
    subset = openapi_schema(strict)
    allowed = {"type", "title", "nullable", "enum", "properties", "required", "anyOf"}
    allowed |= {"items", "minItems"}
    for node in _nodes(subset):
        assert set(node) <= allowed
        assert "type" not in node or (isinstance(node["type"], str) and node["type"].isupper())


@st.composite
def people(draw: st.DrawFn) -> Any:
    return draw(
        st.builds(
            Profile,
            name=st.text(),
            age=st.integers(-(2**53), 2**53),
            score=st.floats(allow_nan=False, allow_infinity=False),
            admin=st.booleans(),
            tags=st.lists(st.text(), max_size=3),
            counts=st.dictionaries(st.text(), st.integers(), max_size=3),
            home=st.none() | st.builds(Home, city=st.text(), floor=st.none() | st.integers()),
        )
    )


class Home(msgspec.Struct):
    city: str
    floor: int | None = None


class Profile(msgspec.Struct):
    name: str
    age: int
    score: float
    admin: bool
    tags: list[str]
    counts: dict[str, int]
    home: Home | None = None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=people())
async def test_any_instance_round_trips_through_a_mock(profile: Profile) -> None:
    """Invariant: any Profile, JSON-encoded by a provider, comes back from structured() equal."""
    mock = MockProvider(name="m", responses=[msgspec.json.encode(profile).decode()])
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"m": mock}) as router:
        assert await router.structured(ask("m:m1"), Profile) == profile


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(profile=people(), label=st.sampled_from(["openai", "anthropic", "gemini", "ollama"]))
async def test_any_instance_round_trips_over_the_wire(profile: Profile, label: str) -> None:
    """Invariant: any Profile the fake upstream answers (JSON text, or Anthropic's forced
    tool input) comes back from structured() equal, for each wire format."""
    reply = msgspec.json.encode(profile).decode()
    async with structured_router({"p": label}, scenarios={"p": Scenario(reply=reply)}) as (
        _,
        router,
        _adapters,
    ):
        assert await router.structured(ask("p:m1"), Profile) == profile


def test_absurdly_deep_schemas_are_refused_with_a_clear_error() -> None:
    """A schema nested thousands of levels deep is an InvalidRequest (or, for Gemini's
    subset, UnsupportedFeature), never a RecursionError traceback."""
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        deep = {"type": "object", "properties": {"x": deep}}
    with pytest.raises(InvalidRequest, match="deeper than"):
        output_schema(deep)
    with pytest.raises(InvalidRequest, match="deeper than"):
        output_schema({"$ref": "#/$defs/D", "$defs": {"D": deep}})
    with pytest.raises(UnsupportedFeature, match="deeper than"):
        openapi_schema(deep)


def test_invalid_output_keeps_no_more_than_an_excerpt() -> None:
    """InvalidOutput's message has no answer text; its excerpt is at most 200 characters."""
    target = output_schema(User)
    long = '{"name": ' + '"x' + "y" * 1000
    response = ChatResponse(id="r", model="m", provider="p", text=long)
    with pytest.raises(InvalidOutput) as caught:
        target.validate(response)
    assert "yyyy" not in str(caught.value)
    assert caught.value.excerpt == long[:200]
