"""Configuration: every mistake is a ConfigError at its exact path; valid configs round-trip.

Also: reading files, preset limits, configuration from the environment, and building
every kind of provider from its config with a fake environment (keys never shown).

The properties work on the raw TOML structure (tables as dicts): hypothesis builds a
valid :class:`RouterConfig`, turns it into TOML text, then applies one mutation whose
expected ``path`` it knows.
"""

from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
import msgspec.structs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from providers import (
    AnthropicProvider,
    AzureOpenAIProvider,
    ChatRequest,
    ConfigError,
    GeminiProvider,
    GroqProvider,
    Message,
    OllamaProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
    OpenRouterProvider,
    TogetherProvider,
)
from providers.testing import MockProvider, open_fake_upstream
from router import open_router
from router._config import (
    BudgetConfig,
    HedgeConfig,
    MockConfig,
    ModelConfig,
    ProviderConfig,
    RouteConfig,
    RouterConfig,
    SupervisorConfig,
    _key,
    decode_config,
    load_config,
    validate_config,
)
from router._health import BreakerConfig
from router._providers import (
    AZURE_ENDPOINT_ENV,
    KEY_ENV,
    PRESETS,
    build_provider,
    config_from_env,
    effective_limits,
)
from router._retry import RetryConfig
from router._validation import _known, validate
from router.testing import SimProvider, SimScenario, load_scenario, simulate

KINDS: list[str] = list(typing.get_args(typing.get_type_hints(ProviderConfig)["kind"]))
ERROR_NAMES = ["retryable", "Overloaded", "RateLimited", "ServerError", "Timeout", "NotFound"]

# --------------------------------------------------------------------------- TOML text


def toml_key(key: str) -> str:
    """A TOML key (keys are not expanded: ``$`` stays as it is)."""
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(key, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """One TOML value, tables inline; a string's ``$`` doubled, so it reads back as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return toml_key(value.replace("$", "$$"))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(raw: dict[str, Any]) -> str:
    """A TOML document for ``raw``: one line per top-level key."""
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in raw.items())


def without_none(value: Any) -> Any:
    """``value`` with every ``None`` dropped (TOML has no null; None is every default)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def raw_of(config: RouterConfig) -> dict[str, Any]:
    """The raw TOML structure of ``config``."""
    raw: dict[str, Any] = without_none(msgspec.to_builtins(config))
    return raw


# --------------------------------------------------------------------------- valid configs

idents = st.from_regex(r"[a-z][a-z0-9_-]{0,7}", fullmatch=True)
names = idents | st.sampled_from(["my provider", "a.b", "ünï", "x'y"])
model_ids = st.from_regex(r"[a-z0-9][a-z0-9.:/-]{0,12}", fullmatch=True)
seconds = st.floats(0.0, 60.0, allow_nan=False)
positive = st.floats(0.001, 100.0, allow_nan=False)
counts = st.none() | st.integers(1, 1_000_000)


@st.composite
def breakers(draw: st.DrawFn) -> BreakerConfig:
    """A valid circuit-breaker config."""
    open_duration = draw(positive)
    return BreakerConfig(
        failure_rate_threshold=draw(st.floats(0.01, 1.0)),
        minimum_calls=draw(st.integers(1, 50)),
        window=draw(st.floats(1.0, 3600.0)),
        open_duration=open_duration,
        max_open_duration=open_duration + draw(seconds),
        half_open_probes=draw(st.integers(1, 5)),
        slow_call_threshold=draw(st.none() | positive),
    )


budgets = st.none() | st.builds(
    BudgetConfig,
    limit=positive,
    period=st.sampled_from(["hour", "day", "week", "month"]) | st.floats(1.0, 1e6),
)


@st.composite
def providers_(draw: st.DrawFn, kind: str) -> ProviderConfig:
    """A valid provider of ``kind``, with the fields its kind takes."""
    rpm, tpm = draw(counts), draw(counts)
    extra: dict[str, Any] = {}
    if kind == "mock":
        extra["mock"] = draw(
            st.none()
            | st.builds(
                MockConfig,
                reply=st.none() | st.text(max_size=20),
                latency=seconds,
                chunk_latency=seconds,
                models=st.lists(model_ids, min_size=1, max_size=3),
            )
        )
    if kind == "azure":
        extra["api_version"] = draw(st.none() | st.sampled_from(["2024-10-21", "v1"]))
        extra["deployments"] = draw(st.dictionaries(model_ids, idents, max_size=2))
    if kind == "openrouter":
        extra["app_name"] = draw(st.none() | st.text(max_size=10))
        extra["app_url"] = draw(st.none() | st.just("https://example.com"))
    return ProviderConfig(
        kind=kind,  # type: ignore[arg-type]
        api_key_env=draw(st.none() | st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)),
        base_url=draw(st.none() | st.just("http://127.0.0.1:8000/v1")),
        rpm=rpm,
        tpm=tpm,
        rpm_burst=draw(counts),
        tpm_burst=draw(counts),
        max_concurrency=draw(counts),
        max_queue=draw(st.integers(0, 10_000)),
        headers=draw(st.dictionaries(names, st.text(max_size=10), max_size=2)),
        breaker=draw(st.just(BreakerConfig()) | breakers()),
        retry=RetryConfig(max_attempts=draw(st.integers(1, 10))),
        degraded_latency=draw(st.none() | positive),
        presets=draw(st.booleans()),
        budget=draw(budgets),
        **extra,
    )


@st.composite
def hedges(draw: st.DrawFn) -> HedgeConfig:
    """A valid hedging policy."""
    min_delay = draw(seconds)
    return HedgeConfig(
        max_attempts=draw(st.integers(1, 5)),
        delay=draw(st.none() | seconds | st.sampled_from(["p50", "p95", "p99.9"])),
        min_delay=min_delay,
        max_delay=min_delay + draw(seconds),
        default_delay=draw(seconds),
        min_samples=draw(st.integers(1, 100)),
        budget_ratio=draw(st.floats(0.0, 1.0)),
        budget_burst=draw(st.floats(0.0, 100.0)),
    )


@st.composite
def routes(draw: st.DrawFn, providers: list[str]) -> RouteConfig:
    """A valid route over ``providers``."""
    targets = draw(
        st.lists(st.tuples(st.sampled_from(providers), model_ids), min_size=1, max_size=4)
    )
    weighted = draw(st.booleans())
    return RouteConfig(
        targets=[f"{p}:{m}" for p, m in targets],
        strategy="weighted" if weighted else draw(st.sampled_from(["fallback", "least-cost"])),
        weights=[draw(positive) for _ in targets] if weighted else None,
        hedge=draw(st.none() | hedges()),
        fail_over_on=draw(st.lists(st.sampled_from(ERROR_NAMES), min_size=1, max_size=3)),
        budget=draw(budgets),
    )


models_ = st.builds(
    ModelConfig,
    context_window=counts,
    max_output_tokens=counts,
    input_price=st.none() | st.floats(0.0, 100.0),
    output_price=st.none() | st.floats(0.0, 100.0),
    cached_input_price=st.none() | st.floats(0.0, 100.0),
    tools=st.none() | st.booleans(),
    vision=st.none() | st.booleans(),
    structured_output=st.none() | st.booleans(),
)


@st.composite
def configs(draw: st.DrawFn) -> RouterConfig:
    """A valid router configuration: providers of any kinds, routes, models, supervision."""
    provider_names = draw(st.lists(names, min_size=1, max_size=2, unique=True))
    providers = {n: draw(providers_(draw(st.sampled_from(KINDS)))) for n in provider_names}
    aliases = [a for a in draw(st.lists(names, max_size=2, unique=True)) if a not in providers]
    model_keys = draw(st.lists(model_ids, max_size=2, unique=True))
    return RouterConfig(
        providers=providers,
        routes={a: draw(routes(provider_names)) for a in aliases},
        models={k: draw(models_) for k in model_keys},
        supervisor=SupervisorConfig(
            max_restarts=draw(st.integers(0, 10)),
            restart_window=draw(positive),
            restart_backoff=draw(seconds),
            max_restart_backoff=draw(seconds),
        ),
        default_max_tokens=draw(st.integers(1, 100_000)),
        budget=draw(budgets),
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_valid_configs_round_trip_through_toml(config: RouterConfig) -> None:
    """Any valid config, written as TOML and decoded again, is the same config."""
    assert decode_config(to_toml(raw_of(config))) == config


def test_the_documented_example_decodes() -> None:
    """The shape docs/configuration.md shows decodes to the structures it names."""
    config = decode_config(
        """
        [providers.openai]
        kind = "openai"
        api_key_env = "OPENAI_API_KEY"
        rpm = 500
        tpm = 150000

        [providers.local]
        kind = "mock"
        mock = { reply = "hi", latency = 0.1 }

        [routes.fast]
        targets = ["openai:gpt-4o-mini", "local:mock-model"]
        hedge = { max_attempts = 2, delay = "p95" }

        [models."openai:gpt-4o-mini"]
        context_window = 128000
        """
    )
    assert config.providers["openai"].rpm == 500
    assert config.providers["local"].mock == MockConfig(reply="hi", latency=0.1)
    assert config.routes["fast"].hedge == HedgeConfig(max_attempts=2, delay="p95")
    assert config.models["openai:gpt-4o-mini"].context_window == 128000


# --------------------------------------------------------------------------- invalid configs

#: A value of each TOML type, to put where another type belongs.
SAMPLES: dict[str, Any] = {
    "int": 7,
    "float": 1.5,
    "str": "x",
    "bool": True,
    "array": [1],
    "table": {"a": 1},
}


def accepted(type_: Any) -> set[str]:
    """The TOML types a field of ``type_`` takes."""
    origin = typing.get_origin(type_)
    if origin is typing.Union or isinstance(type_, types.UnionType):
        return set().union(*(accepted(t) for t in typing.get_args(type_)))
    if origin is Literal:
        return {"str" for a in typing.get_args(type_) if isinstance(a, str)}
    if origin is list:
        return {"array"}
    if origin is dict or (isinstance(type_, type) and issubclass(type_, msgspec.Struct)):
        return {"table"}
    if getattr(type_, "_is_protocol", False):
        return set()  # a callable (a route's Strategy): given in code, never in TOML
    return {
        bool: {"bool"},
        int: {"int"},
        float: {"int", "float"},
        str: {"str"},
        type(None): set(),
    }[type_]


#: The structs of a config, the fields the tests may touch in each (RouterConfig's own
#: fields are listed so that sections added later do not change what is tested).
FIELDS: dict[type[msgspec.Struct], tuple[str, ...]] = {
    RouterConfig: ("providers", "routes", "models", "supervisor", "default_max_tokens", "budget"),
    ProviderConfig: ProviderConfig.__struct_fields__,
    RouteConfig: RouteConfig.__struct_fields__,
    HedgeConfig: HedgeConfig.__struct_fields__,
    ModelConfig: ModelConfig.__struct_fields__,
    MockConfig: MockConfig.__struct_fields__,
    SupervisorConfig: SupervisorConfig.__struct_fields__,
    BudgetConfig: BudgetConfig.__struct_fields__,
    BreakerConfig: BreakerConfig.__struct_fields__,
    RetryConfig: RetryConfig.__struct_fields__,
}

#: Values out of range, per struct and field; the error is at the field.
OUT_OF_RANGE: dict[type[msgspec.Struct], dict[str, list[Any]]] = {
    RouterConfig: {"default_max_tokens": [0, -1]},
    ProviderConfig: {
        "rpm": [0, -5],
        "tpm": [0],
        "rpm_burst": [0],
        "tpm_burst": [-1],
        "max_concurrency": [0],
        "max_queue": [-1],
        "degraded_latency": [0.0, -1.0, math.inf, math.nan],
    },
    RouteConfig: {"targets": [[]]},
    HedgeConfig: {
        "max_attempts": [0, 6, -1],
        "delay": [-1.0, math.inf, math.nan, "p0", "p100", "fast", "95", "p", "p9x"],
        "min_delay": [-0.5, math.nan],
        "default_delay": [-1.0, math.inf],
        "min_samples": [0],
        "budget_ratio": [-0.1],
        "budget_burst": [math.inf],
    },
    ModelConfig: {
        "context_window": [0, -1],
        "max_output_tokens": [0],
        "input_price": [-1.0, math.nan],
        "output_price": [math.inf],
        "cached_input_price": [-0.01],
    },
    MockConfig: {"latency": [-1.0, math.nan], "chunk_latency": [-0.1]},
    SupervisorConfig: {
        "max_restarts": [-1],
        "restart_window": [0.0, -1.0, math.inf],
        "restart_backoff": [-1.0],
        "max_restart_backoff": [math.inf, math.nan],
    },
    BudgetConfig: {"limit": [0.0, -1.0, math.inf], "period": [0.0, -5.0, "year"]},
    BreakerConfig: {
        "failure_rate_threshold": [0.0, 1.5],
        "minimum_calls": [0],
        "window": [0.0, 4000.0],
        "open_duration": [0.0],
        "open_backoff_multiplier": [0.5],
        "half_open_probes": [0],
        "slow_call_threshold": [0.0, -1.0],
    },
    RetryConfig: {
        "max_attempts": [0, 11],
        "initial_backoff": [-1.0],
        "multiplier": [0.5],
        "max_retry_after": [-1.0],
        "budget_ratio": [math.nan],
        "budget_window": [0.5, 61.0],
    },
}


def tables(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any], type[msgspec.Struct]]]:
    """Every table of ``raw`` the tests mutate: (path, the table, its struct).

    Optional sub-tables a struct may hold (breaker, retry, hedge, budget, a mock's
    settings) are created empty (all defaults) so that they can be mutated too.
    """
    found: list[tuple[str, dict[str, Any], type[msgspec.Struct]]] = [("$", raw, RouterConfig)]
    found.append(("$.supervisor", raw.setdefault("supervisor", {}), SupervisorConfig))
    found.append(("$.budget", raw.setdefault("budget", {"limit": 1.0}), BudgetConfig))
    for name, p in raw["providers"].items():
        at = f"$.providers{_key(name)}"
        found.append((at, p, ProviderConfig))
        found.append((f"{at}.breaker", p.setdefault("breaker", {}), BreakerConfig))
        found.append((f"{at}.retry", p.setdefault("retry", {}), RetryConfig))
        found.append((f"{at}.budget", p.setdefault("budget", {"limit": 1.0}), BudgetConfig))
        if p["kind"] == "mock":
            found.append((f"{at}.mock", p.setdefault("mock", {}), MockConfig))
    for alias, r in raw.get("routes", {}).items():
        at = f"$.routes{_key(alias)}"
        found.append((at, r, RouteConfig))
        found.append((f"{at}.hedge", r.setdefault("hedge", {}), HedgeConfig))
        found.append((f"{at}.budget", r.setdefault("budget", {"limit": 1.0}), BudgetConfig))
    for key, m in raw.get("models", {}).items():
        found.append((f"$.models{_key(key)}", m, ModelConfig))
    return found


MUTATIONS = [
    "wrong type",
    "out of range",
    "unknown field",
    "missing field",
    "bad target",
    "unknown provider",
    "fail_over_on",
    "weights",
    "kind field",
    "header value",
    "provider name",
    "alias clash",
]


@st.composite
def invalid_configs(draw: st.DrawFn, mutation: str) -> tuple[dict[str, Any], str, str]:
    """A config with exactly one mistake of the kind ``mutation``: (raw TOML structure,
    expected path, what)."""
    raw = raw_of(draw(configs()))
    places = tables(raw)
    decode_config(to_toml(raw))  # still valid with the empty sub-tables
    wanted = {
        "out of range": tuple(OUT_OF_RANGE),
        "bad target": (RouteConfig,),
        "unknown provider": (RouteConfig,),
        "fail_over_on": (RouteConfig,),
        "weights": (RouteConfig,),
        "kind field": (ProviderConfig,),
        "header value": (ProviderConfig,),
    }.get(mutation, tuple(FIELDS))
    candidates = [place for place in places if place[2] in wanted]
    if mutation == "missing field":
        candidates = [p for p in places if {"kind", "targets", "limit"} & set(p[1])]
    assume(candidates)  # a config without routes has no route to get wrong
    at, table, struct = draw(st.sampled_from(candidates))
    if mutation == "wrong type":
        field = draw(st.sampled_from(FIELDS[struct]))
        wrong = sorted(set(SAMPLES) - accepted(typing.get_type_hints(struct)[field]))
        table[field] = SAMPLES[draw(st.sampled_from(wrong))]
        return raw, f"{at}.{field}", f"{field} of the wrong type"
    if mutation == "out of range":
        field = draw(st.sampled_from(sorted(OUT_OF_RANGE[struct])))
        value = draw(st.sampled_from(OUT_OF_RANGE[struct][field]))
        if struct is RetryConfig and field == "initial_backoff":
            table.pop("max_backoff", None)
        table[field] = value
        return raw, f"{at}.{field}", f"{field} = {value!r}"
    if mutation == "unknown field":
        name = draw(names.filter(lambda n: n not in struct.__struct_fields__))
        table[name] = draw(st.sampled_from(list(SAMPLES.values())))
        return raw, f"{at}{_key(name)}", f"unknown field {name!r}"
    if mutation == "missing field":
        field = draw(st.sampled_from([f for f in ("kind", "targets", "limit") if f in table]))
        del table[field]
        return raw, at, f"no {field}"  # the table that lacks it
    if mutation in ("bad target", "unknown provider", "fail_over_on", "weights"):
        n = len(table["targets"])
        i = draw(st.integers(0, n - 1))
        if mutation == "bad target":
            table["targets"][i] = draw(st.sampled_from(["noprovider", ":model", "provider:", ""]))
            return raw, f"{at}.targets[{i}]", "a target without provider:model"
        if mutation == "unknown provider":
            provider = draw(idents.filter(lambda p: p not in raw["providers"]))
            table["targets"][i] = f"{provider}:m"
            return raw, f"{at}.targets[{i}]", f"a target on unknown provider {provider!r}"
        if mutation == "fail_over_on":
            names_ = table["fail_over_on"]
            j = draw(st.integers(0, len(names_)))
            names_.insert(j, draw(st.sampled_from(["Bogus", "retriable", "valueerror", ""])))
            return raw, f"{at}.fail_over_on[{j}]", "an unknown error name"
        if draw(st.booleans()):
            table["weights"] = [1.0] * (n + 1)
            return raw, f"{at}.weights", "a weight too many"
        table["weights"] = [1.0] * n
        table["weights"][i] = draw(st.sampled_from([0.0, -1.0, math.inf, math.nan]))
        return raw, f"{at}.weights[{i}]", "a weight out of range"
    if mutation in ("kind field", "header value"):
        if mutation == "header value":
            key = draw(names)
            table.setdefault("headers", {})[key] = draw(st.sampled_from([1, 2.5, True, [], {}]))
            return raw, f"{at}.headers{_key(key)}", "a header that is not a string"
        field, value, kind = draw(
            st.sampled_from(
                [
                    ("mock", {}, "mock"),
                    ("api_version", "2024-10-21", "azure"),
                    ("deployments", {"gpt-4o": "d"}, "azure"),
                    ("app_name", "app", "openrouter"),
                    ("app_url", "https://example.com", "openrouter"),
                ]
            )
        )
        assume(table["kind"] != kind)
        table[field] = value
        return raw, f"{at}.{field}", f"{field} on a {table['kind']} provider"
    if mutation == "provider name":
        name = draw(st.sampled_from(["", "a:b", ":", "openai:"]))
        raw["providers"][name] = {"kind": "mock"}
        return raw, f"$.providers{_key(name)}", f"provider name {name!r}"
    # An alias that is also a provider's name.
    name = draw(st.sampled_from(sorted(raw["providers"])))
    first = next(iter(raw["providers"]))
    raw.setdefault("routes", {})
    assume(name not in raw["routes"])
    raw["routes"] = {name: {"targets": [f"{first}:m"]}, **raw["routes"]}
    return raw, f"$.routes{_key(name)}", "a route named like a provider"


@pytest.mark.parametrize("mutation", MUTATIONS)
@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_mistake_is_a_config_error_at_its_path(mutation: str, data: st.DataObject) -> None:
    """One mistake anywhere: a ConfigError whose path names exactly where it is."""
    raw, path, _what = data.draw(invalid_configs(mutation))
    with pytest.raises(ConfigError) as info:
        decode_config(to_toml(raw), source="router.toml")
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    assert "(in router.toml)" in str(info.value)


def leaves(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths (keys and indices) of every value inside ``value``."""
    found = [at] if at else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += leaves(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += leaves(v, (*at, i))
    return found


toml_values = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.data())
def test_any_value_anywhere_gives_a_config_or_a_config_error(
    config: RouterConfig, data: st.DataObject
) -> None:
    """Any value put anywhere: a config, or a ConfigError with a path, never another error."""
    raw = raw_of(config)
    where = data.draw(st.sampled_from(leaves(raw)))
    parent = raw
    for step in where[:-1]:
        parent = parent[step]
    parent[where[-1]] = data.draw(toml_values)
    try:
        decode_config(to_toml(raw))
    except ConfigError as exc:
        path = exc.path
    else:
        return
    assert path is not None
    assert path.startswith("$")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("providers = 3", "$.providers"),
        ("routes = []\n[providers.a]\nkind = 'mock'", "$.routes"),
        ("[providers]", "$.providers"),
        ("[providers.a]\nkind = 'nope'", "$.providers.a.kind"),
        ("[providers.a]\nkind = 'mock'\nrpm = 1.5", "$.providers.a.rpm"),
        ("[providers.a]\nkind = 'openai'\nheaders = { 'x y' = 1 }", "$.providers.a.headers['x y']"),
        (
            "[providers.a]\nkind = 'mock'\n[routes.'r.1']\ntargets = ['b:m']",
            "$.routes['r.1'].targets[0]",
        ),
        (
            "[providers.a]\nkind = 'mock'\n[routes.r]\ntargets = ['a:m', 'a']",
            "$.routes.r.targets[1]",
        ),
        (
            "[providers.a]\nkind = 'mock'\n[routes.r]\ntargets = ['a:m']\nhedge = { delay = 'p100' }",
            "$.routes.r.hedge.delay",
        ),
        (
            "[providers.a]\nkind = 'mock'\n[routes.r]\ntargets = ['a:m']\nhedge = { min_delay = 2.0, max_delay = 1.0 }",
            "$.routes.r.hedge.max_delay",
        ),
        ("[providers.a]\nkind = 'mock'\nmock = { latency = -1.0 }", "$.providers.a.mock.latency"),
        ("[providers.a]\nkind = 'groq'\ndeployments = { m = 'd' }", "$.providers.a.deployments"),
        (
            "[providers.a]\nkind = 'mock'\n[models.'a:m']\ncontext_window = 0",
            "$.models['a:m'].context_window",
        ),
        (
            "[providers.a]\nkind = 'mock'\nbreaker = { open_duration = 10.0, max_open_duration = 5.0 }",
            "$.providers.a.breaker.max_open_duration",
        ),
    ],
)
def test_config_error_paths_table(text: str, path: str) -> None:
    """Hand-picked mistakes and the exact path each is reported at."""
    with pytest.raises(ConfigError) as info:
        decode_config(text)
    assert info.value.path == path


def test_invalid_toml_is_a_config_error_naming_the_source() -> None:
    """Text that is not TOML: a ConfigError that names the source, with no path."""
    with pytest.raises(ConfigError, match=r"router\.toml is not valid TOML") as info:
        decode_config("x = = 1", source="router.toml")
    assert info.value.path is None


# --------------------------------------------------------------------------- files


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    """A valid file loads; bytes or text decode the same."""
    path = tmp_path / "router.toml"
    path.write_text("[providers.local]\nkind = 'mock'\n", encoding="utf-8")
    assert load_config(path) == decode_config(path.read_bytes()) == decode_config(path.read_text())
    assert load_config(str(path)).providers["local"].kind == "mock"


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_load_config_names_a_file_it_cannot_read(tmp_path: Path, make: str) -> None:
    """A missing file or a directory: a ConfigError naming the file, with no path."""
    path = tmp_path / "router.toml"
    if make == "directory":
        path.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert info.value.path is None


@pytest.mark.parametrize(
    "text",
    [
        "[providers.a]\nkind = 'mock'\nrpm = 'x'\n",  # a value
        "[providers.a]\nkind = 'mock'\n[routes.r]\ntargets = ['b:m']\n",  # a reference
        "[providers\n",  # the TOML itself
    ],
)
def test_load_config_errors_name_the_file(tmp_path: Path, text: str) -> None:
    """Whatever is wrong inside a file, the message names the file."""
    path = tmp_path / "router.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("kind", KINDS)
def test_presets_fill_unset_limits_for_every_kind(kind: str) -> None:
    """Unset rpm/tpm take the kind's preset (none for kinds without one)."""
    assert effective_limits(ProviderConfig(kind=kind)) == PRESETS.get(kind, (None, None))  # type: ignore[arg-type]


@given(st.sampled_from(KINDS), counts, counts)
def test_the_config_wins_over_presets(kind: str, rpm: int | None, tpm: int | None) -> None:
    """A configured limit is kept; only unset ones come from the preset."""
    preset = PRESETS.get(kind, (None, None))
    config = ProviderConfig(kind=kind, rpm=rpm, tpm=tpm)  # type: ignore[arg-type]
    expected = (rpm if rpm is not None else preset[0], tpm if tpm is not None else preset[1])
    assert effective_limits(config) == expected


@given(st.sampled_from(KINDS), counts, counts)
def test_presets_false_disables_them(kind: str, rpm: int | None, tpm: int | None) -> None:
    """With presets = false, the limits are exactly the configured ones."""
    config = ProviderConfig(kind=kind, rpm=rpm, tpm=tpm, presets=False)  # type: ignore[arg-type]
    assert effective_limits(config) == (rpm, tpm)


# --------------------------------------------------------------------------- the environment

ALL_KEY_VARS = sorted({var for names_ in KEY_ENV.values() for var in names_})


def test_config_from_env_without_keys_lists_the_variables() -> None:
    """No key at all: a ConfigError naming every variable it looked for."""
    with pytest.raises(ConfigError) as info:
        config_from_env({"PATH": "/bin", "OPENAI_API_KEY": ""})
    for var in [*ALL_KEY_VARS, AZURE_ENDPOINT_ENV]:
        assert var in str(info.value)


@pytest.mark.parametrize(
    ("environ", "kinds"),
    [
        ({"OPENAI_API_KEY": "k"}, {"openai"}),
        ({"GEMINI_API_KEY": "k"}, {"gemini"}),
        ({"GOOGLE_API_KEY": "k"}, {"gemini"}),
        ({"GEMINI_API_KEY": "k", "GOOGLE_API_KEY": "k2"}, {"gemini"}),
        ({"ANTHROPIC_API_KEY": "k", "GROQ_API_KEY": "k"}, {"anthropic", "groq"}),
        (
            {"AZURE_OPENAI_API_KEY": "k", AZURE_ENDPOINT_ENV: "https://x.openai.azure.com"},
            {"azure"},
        ),
        ({"AZURE_OPENAI_API_KEY": "k", "OPENROUTER_API_KEY": "k"}, {"openrouter"}),
    ],
)
def test_config_from_env_table(environ: dict[str, str], kinds: set[str]) -> None:
    """One provider per kind whose key is set, named after the kind; Azure needs its endpoint."""
    config = config_from_env(environ)
    assert set(config.providers) == kinds
    assert all(config.providers[k] == ProviderConfig(kind=k) for k in kinds)  # type: ignore[arg-type]


def test_azure_without_its_endpoint_is_not_configured() -> None:
    """An Azure key alone configures nothing, so it is the no-key error."""
    with pytest.raises(ConfigError, match=AZURE_ENDPOINT_ENV):
        config_from_env({"AZURE_OPENAI_API_KEY": "k"})


@given(st.sets(st.sampled_from([*ALL_KEY_VARS, AZURE_ENDPOINT_ENV])))
def test_config_from_env_configures_exactly_the_kinds_with_keys(present: set[str]) -> None:
    """The providers are exactly the kinds with a key set (Azure: and its endpoint)."""
    environ = {var: "value" for var in present}
    expected = {
        kind
        for kind, vars_ in KEY_ENV.items()
        if set(vars_) & present and (kind != "azure" or AZURE_ENDPOINT_ENV in present)
    }
    if not expected:
        with pytest.raises(ConfigError):
            config_from_env(environ)
    else:
        assert set(config_from_env(environ).providers) == expected


# --------------------------------------------------------------------------- building providers

KEY = "sk-test-0123456789abcdef"
ENDPOINT = "https://example.openai.azure.com"
FULL_ENV = {**{var: KEY for var in ALL_KEY_VARS}, AZURE_ENDPOINT_ENV: ENDPOINT}
ADAPTERS: dict[str, type[Any]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "ollama": OllamaProvider,
    "openrouter": OpenRouterProvider,
    "groq": GroqProvider,
    "together": TogetherProvider,
    "azure": AzureOpenAIProvider,
    "openai-compatible": OpenAICompatibleProvider,
    "mock": MockProvider,
}


def config_of(kind: str, **fields: Any) -> ProviderConfig:
    """A provider config of ``kind``; openai-compatible gets the base_url it needs."""
    if kind == "openai-compatible":
        fields.setdefault("base_url", "http://127.0.0.1:8000/v1")
    return ProviderConfig(kind=kind, **fields)  # type: ignore[arg-type]


def test_every_kind_has_an_adapter() -> None:
    """The table below covers every kind the config accepts."""
    assert set(ADAPTERS) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
async def test_build_provider_gives_the_kinds_adapter(kind: str) -> None:
    """Each kind builds its adapter class, with the configured name and the kind's kind."""
    provider = build_provider("my-name", config_of(kind), FULL_ENV)
    try:
        assert type(provider) is ADAPTERS[kind]
        assert provider.name == "my-name"
        assert provider.kind == kind
        assert KEY not in repr(provider)
        assert KEY not in str(provider)
    finally:
        await provider.aclose()


@pytest.mark.parametrize("kind", sorted(KEY_ENV))
def test_a_missing_key_names_its_variables(kind: str) -> None:
    """A kind that needs a key, without it: a ConfigError at api_key_env naming the variables."""
    with pytest.raises(ConfigError) as info:
        build_provider("p", config_of(kind), {AZURE_ENDPOINT_ENV: ENDPOINT})
    assert info.value.path == "$.providers.p.api_key_env"
    for var in KEY_ENV[kind]:
        assert var in str(info.value)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "mock"])
def test_a_missing_custom_key_variable_is_named(kind: str) -> None:
    """api_key_env names a variable that is not set: that variable is in the error."""
    config = config_of(kind, api_key_env="MY_ROUTER_KEY")
    with pytest.raises(ConfigError, match="MY_ROUTER_KEY") as info:
        build_provider("my provider", config, FULL_ENV)
    assert info.value.path == "$.providers['my provider'].api_key_env"


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "mock"])
async def test_a_custom_key_variable_is_used(kind: str) -> None:
    """api_key_env set and present: the provider builds from it alone."""
    provider = build_provider(
        "p",
        config_of(kind, api_key_env="MY_ROUTER_KEY"),
        {
            "MY_ROUTER_KEY": KEY,
            AZURE_ENDPOINT_ENV: ENDPOINT,
        },
    )
    await provider.aclose()


@pytest.mark.parametrize("kind", ["ollama", "openai-compatible", "mock"])
async def test_keyless_kinds_need_no_environment(kind: str) -> None:
    """Local servers and the mock build with an empty environment."""
    provider = build_provider("p", config_of(kind), {})
    await provider.aclose()


def test_openai_compatible_needs_a_base_url() -> None:
    """openai-compatible without base_url: a ConfigError at base_url."""
    with pytest.raises(ConfigError, match="base_url") as info:
        build_provider("p", ProviderConfig(kind="openai-compatible"), FULL_ENV)
    assert info.value.path == "$.providers.p.base_url"


async def test_azure_needs_an_endpoint() -> None:
    """Azure without base_url or AZURE_OPENAI_ENDPOINT: a ConfigError at base_url."""
    env = {"AZURE_OPENAI_API_KEY": KEY}
    with pytest.raises(ConfigError, match=AZURE_ENDPOINT_ENV) as info:
        build_provider("az", ProviderConfig(kind="azure"), env)
    assert info.value.path == "$.providers.az.base_url"
    assert KEY not in str(info.value)
    for config in (ProviderConfig(kind="azure", base_url=ENDPOINT), ProviderConfig(kind="azure")):
        environ = env if config.base_url else {**env, AZURE_ENDPOINT_ENV: ENDPOINT}
        provider = build_provider("az", config, environ)
        assert isinstance(provider, AzureOpenAIProvider)
        await provider.aclose()


@settings(max_examples=25)
@given(
    st.sampled_from(KINDS),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=40),
)
async def test_the_key_never_shows(kind: str, key: str) -> None:
    """Whatever the key, it is in no error message and no repr of what is built."""
    key = "sk-" + key
    environ = {var: key for var in ALL_KEY_VARS}
    try:
        provider = build_provider("p", config_of(kind), environ)  # azure: no endpoint
    except ConfigError as exc:
        shown = [str(exc), repr(exc)]
    else:
        shown = [repr(provider), str(provider), repr(getattr(provider, "__dict__", {}))]
        await provider.aclose()
    assert all(key not in text for text in shown)


# --------------------------------------------------------------------------- built in code
#
# The issue this pins: a config built in code used to skip most checks (a bad strategy
# behaved as "fallback", a misspelt kind was "a missing API key" or a KeyError) or raise
# a ValueError from a struct's constructor; 1 of 6 such mistakes was a ConfigError, 25
# of 25 in TOML.  Now both go through one validation: the same path, the same message.

LOCAL = {"local": ProviderConfig(kind="mock")}
LOCAL_TOML = "[providers.local]\nkind = 'mock'\n"
FAST_TOML = LOCAL_TOML + "[routes.fast]\ntargets = ['local:m']\n"
KIND_CHOICES = ", ".join(KINDS)
STRATEGIES = "fallback, weighted, least-latency, least-cost, least-busy"


def with_route(**fields: Any) -> RouterConfig:
    """LOCAL with one route ``fast`` (targets ``local:m`` unless given)."""
    fields.setdefault("targets", ["local:m"])
    return RouterConfig(providers=LOCAL, routes={"fast": RouteConfig(**fields)})


def with_provider(**fields: Any) -> RouterConfig:
    """One provider ``x`` of kind mock unless given."""
    fields.setdefault("kind", "mock")
    return RouterConfig(providers={"x": ProviderConfig(**fields)})


#: (code-built config, the same in TOML, path, words the message must contain).
CODE_MISTAKES = [
    pytest.param(
        lambda: with_route(strategy="least_cost"),
        FAST_TOML + "strategy = 'least_cost'",
        "$.routes.fast.strategy",
        ["'least_cost' is not one of: " + STRATEGIES, "did you mean 'least-cost'?"],
        id="strategy",
    ),
    pytest.param(
        lambda: with_provider(kind="openia"),
        "[providers.x]\nkind = 'openia'",
        "$.providers.x.kind",
        ["'openia' is not one of: " + KIND_CHOICES, "did you mean 'openai'?"],
        id="kind",
    ),
    pytest.param(
        lambda: with_provider(kind="openia", api_key_env="OPENIA_API_KEY"),
        "[providers.x]\nkind = 'openia'\napi_key_env = 'OPENIA_API_KEY'",
        "$.providers.x.kind",
        ["'openia' is not one of: " + KIND_CHOICES],
        id="kind-with-key",
    ),
    pytest.param(
        lambda: with_provider(kind=5),
        "[providers.x]\nkind = 5",
        "$.providers.x.kind",
        ["expected one of: " + KIND_CHOICES + ", got int 5"],
        id="kind-type",
    ),
    pytest.param(
        lambda: with_provider(rpm="fast"),
        "[providers.x]\nkind = 'mock'\nrpm = 'fast'",
        "$.providers.x.rpm",
        ["expected int, got str 'fast'"],
        id="rpm-type",
    ),
    pytest.param(
        lambda: with_provider(rpm=-5),
        "[providers.x]\nkind = 'mock'\nrpm = -5",
        "$.providers.x.rpm",
        ["must be a positive int", "got -5"],
        id="rpm-negative",
    ),
    pytest.param(
        lambda: with_provider(tpm=0),
        "[providers.x]\nkind = 'mock'\ntpm = 0",
        "$.providers.x.tpm",
        ["must be a positive int", "got 0"],
        id="tpm-zero",
    ),
    pytest.param(
        lambda: with_provider(max_concurrency=0),
        "[providers.x]\nkind = 'mock'\nmax_concurrency = 0",
        "$.providers.x.max_concurrency",
        ["got 0"],
        id="concurrency-zero",
    ),
    pytest.param(
        lambda: with_provider(max_queue=-1),
        "[providers.x]\nkind = 'mock'\nmax_queue = -1",
        "$.providers.x.max_queue",
        ["must be >= 0, got -1"],
        id="queue-negative",
    ),
    pytest.param(
        lambda: with_provider(headers={"X-Team": 1}),
        "[providers.x]\nkind = 'mock'\nheaders = { X-Team = 1 }",
        "$.providers.x.headers.X-Team",
        ["expected str, got int 1"],
        id="header-type",
    ),
    pytest.param(
        lambda: with_provider(kind="openai", mock=MockConfig()),
        "[providers.x]\nkind = 'openai'\nmock = {}",
        "$.providers.x.mock",
        ["belongs to providers of kind 'mock', not 'openai'"],
        id="mock-on-openai",
    ),
    pytest.param(
        lambda: with_provider(breaker=BreakerConfig(window=0.0)),
        "[providers.x]\nkind = 'mock'\nbreaker = { window = 0.0 }",
        "$.providers.x.breaker.window",
        ["(0, 3600]", "got 0.0"],
        id="breaker-window",
    ),
    pytest.param(
        lambda: with_provider(retry=RetryConfig(max_attempts=0)),
        "[providers.x]\nkind = 'mock'\nretry = { max_attempts = 0 }",
        "$.providers.x.retry.max_attempts",
        ["from 1 to 10", "got 0"],
        id="retry-attempts",
    ),
    pytest.param(
        lambda: with_route(targets=[]),
        LOCAL_TOML + "[routes.fast]\ntargets = []",
        "$.routes.fast.targets",
        ["at least one target", "got []"],
        id="targets-empty",
    ),
    pytest.param(
        lambda: with_route(targets="local:m"),
        LOCAL_TOML + "[routes.fast]\ntargets = 'local:m'",
        "$.routes.fast.targets",
        ["expected list[str], got str 'local:m'"],
        id="targets-type",
    ),
    pytest.param(
        lambda: with_route(targets=["lcoal:m"]),
        LOCAL_TOML + "[routes.fast]\ntargets = ['lcoal:m']",
        "$.routes.fast.targets[0]",
        ["unknown provider 'lcoal'", "configured: local", "did you mean 'local'?"],
        id="target-unknown-provider",
    ),
    pytest.param(
        lambda: with_route(targets=["local:m", "gpt-4o"]),
        LOCAL_TOML + "[routes.fast]\ntargets = ['local:m', 'gpt-4o']",
        "$.routes.fast.targets[1]",
        ["must look like 'provider:model', got 'gpt-4o'"],
        id="target-shape",
    ),
    pytest.param(
        lambda: with_route(hedge=HedgeConfig(delay="soonish")),
        FAST_TOML + "hedge = { delay = 'soonish' }",
        "$.routes.fast.hedge.delay",
        ["seconds >= 0 or a percentile", "'p95'", "got 'soonish'"],
        id="hedge-delay",
    ),
    pytest.param(
        lambda: with_route(hedge=HedgeConfig(delay=-1.0)),
        FAST_TOML + "hedge = { delay = -1.0 }",
        "$.routes.fast.hedge.delay",
        ["seconds >= 0", "got -1.0"],
        id="hedge-delay-negative",
    ),
    pytest.param(
        lambda: with_route(hedge=HedgeConfig(max_attempts=9)),
        FAST_TOML + "hedge = { max_attempts = 9 }",
        "$.routes.fast.hedge.max_attempts",
        ["from 1 to 5, got 9"],
        id="hedge-attempts",
    ),
    pytest.param(
        lambda: with_route(weights=[1.0, 2.0]),
        FAST_TOML + "weights = [1.0, 2.0]",
        "$.routes.fast.weights",
        ["one weight per target (1), got 2"],
        id="weights-count",
    ),
    pytest.param(
        lambda: with_route(fail_over_on=["Overload"]),
        FAST_TOML + "fail_over_on = ['Overload']",
        "$.routes.fast.fail_over_on[0]",
        ["unknown error name 'Overload'", "did you mean 'Overloaded'?"],
        id="fail-over-name",
    ),
    pytest.param(
        lambda: RouterConfig(providers=LOCAL, budget=BudgetConfig(limit=-1.0)),
        LOCAL_TOML + "[budget]\nlimit = -1.0",
        "$.budget.limit",
        ["positive number of dollars, got -1.0"],
        id="budget-limit",
    ),
    pytest.param(
        lambda: RouterConfig(providers=LOCAL, budget=BudgetConfig(limit=1.0, period="year")),
        LOCAL_TOML + "[budget]\nlimit = 1.0\nperiod = 'year'",
        "$.budget.period",
        ["'year' is not one of: hour, day, week, month, or float"],
        id="budget-period",
    ),
    pytest.param(
        lambda: RouterConfig(providers=LOCAL, models={"local:m": ModelConfig(context_window=0)}),
        LOCAL_TOML + "[models.'local:m']\ncontext_window = 0",
        "$.models['local:m'].context_window",
        ["got 0"],
        id="model-window",
    ),
    pytest.param(
        lambda: RouterConfig(providers=LOCAL, supervisor=SupervisorConfig(max_restarts=-1)),
        LOCAL_TOML + "[supervisor]\nmax_restarts = -1",
        "$.supervisor.max_restarts",
        ["must be >= 0, got -1"],
        id="supervisor",
    ),
    pytest.param(
        lambda: RouterConfig(providers={}),
        "providers = {}",
        "$.providers",
        ["at least one provider"],
        id="no-providers",
    ),
    pytest.param(
        lambda: RouterConfig(providers=LOCAL, default_max_tokens=0),
        "default_max_tokens = 0\n" + LOCAL_TOML,
        "$.default_max_tokens",
        ["must be >= 1, got 0"],
        id="default-max-tokens",
    ),
    # Constrained fields (Annotated with msgspec.Meta): the bound and the value, from the
    # annotation itself (their messages were msgspec's text, cut up: no value shown).
    pytest.param(
        lambda: with_provider(first_token_timeout=-1),
        "[providers.x]\nkind = 'mock'\nfirst_token_timeout = -1",
        "$.providers.x.first_token_timeout",
        ["must be > 0, got -1.0"],
        id="first-token-timeout-bound",
    ),
    pytest.param(
        lambda: with_provider(idle_timeout="soon"),
        "[providers.x]\nkind = 'mock'\nidle_timeout = 'soon'",
        "$.providers.x.idle_timeout",
        ["expected float, got str 'soon'"],
        id="idle-timeout-type",
    ),
    pytest.param(
        lambda: with_provider(queue_wait_threshold=-0.5),
        "[providers.x]\nkind = 'mock'\nqueue_wait_threshold = -0.5",
        "$.providers.x.queue_wait_threshold",
        ["must be >= 0, got -0.5"],
        id="queue-wait-threshold-bound",
    ),
]


@pytest.mark.parametrize(("make", "toml", "path", "words"), CODE_MISTAKES)
async def test_a_mistake_built_in_code_is_the_config_error_toml_gives(
    make: Any, toml: str, path: str, words: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built in code, the struct takes the mistake without raising; open_router raises a
    ConfigError at the field's path saying the bad value and what is allowed (the
    choices, for an enum); the same mistake in TOML gives the same path and message."""
    monkeypatch.setenv("OPENIA_API_KEY", "sk-not-a-real-key-0000")  # the KeyError case
    config = make()  # building it does not raise
    with pytest.raises(ConfigError) as in_code:
        async with open_router(config):
            pytest.fail("the router opened")  # pragma: no cover
    with pytest.raises(ConfigError) as in_toml:
        decode_config(toml, source="router.toml")
    assert in_code.value.path == in_toml.value.path == path
    message = str(in_code.value)
    assert message.startswith(f"{path}: ")
    assert str(in_toml.value) == f"{message} (in router.toml)"
    for word in words:
        assert word in message


def test_the_issue_counts_six_of_six() -> None:
    """The six code-built mistakes the issue lists are all ConfigErrors, none silently
    accepted (the strategy) or another exception (ValueError, TypeError, KeyError)."""
    six = {"strategy", "kind", "kind-with-key", "rpm-type", "rpm-negative", "hedge-delay"}
    six |= {"targets-empty"}  # the issue lists targets=[] with the range errors
    found = {p.id: p.values[0] for p in CODE_MISTAKES if p.id in six}
    assert set(found) == six
    for make in found.values():
        with pytest.raises(ConfigError):
            validate_config(make())


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_validation_is_the_identity_on_valid_configs(config: RouterConfig) -> None:
    """Invariant: a valid config built in code validates to itself, and to what its TOML
    decodes to."""
    assert validate_config(config) == config == decode_config(to_toml(raw_of(config)))


#: Mistakes a struct built in code can hold (an unknown or a missing field cannot be:
#: the struct's signature refuses them).
CODE_MUTATIONS = [m for m in MUTATIONS if m not in ("unknown field", "missing field")]


def build(value: Any, type_: Any) -> Any:
    """``value`` (raw TOML) built into structs by their constructors, as code builds
    them: nothing is checked or converted, so a wrong value stays in the struct."""
    members = (
        typing.get_args(type_)
        if typing.get_origin(type_) in (typing.Union, types.UnionType)
        else (type_,)
    )
    for member in members:
        origin = typing.get_origin(member) or member
        if (
            isinstance(value, dict)
            and isinstance(origin, type)
            and issubclass(origin, msgspec.Struct)
        ):
            fields = {f.name: f.type for f in msgspec.structs.fields(origin)}
            return origin(**{k: build(v, fields[k]) for k, v in value.items()})
        if isinstance(value, dict) and origin is dict:
            return {k: build(v, typing.get_args(member)[1]) for k, v in value.items()}
        if isinstance(value, list) and origin is list:
            return [build(v, typing.get_args(member)[0]) for v in value]
    return value


@pytest.mark.parametrize("mutation", CODE_MUTATIONS)
@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_code_and_toml_agree_on_every_mistake(mutation: str, data: st.DataObject) -> None:
    """Invariant: any one mistake, in a config built in code or written in TOML, is the
    same ConfigError: the same path and the same message."""
    raw, path, _what = data.draw(invalid_configs(mutation))
    config = build(raw, RouterConfig)
    with pytest.raises(ConfigError) as in_code:
        validate_config(config)
    with pytest.raises(ConfigError) as in_toml:
        decode_config(to_toml(raw), source="r.toml")
    assert in_code.value.path == in_toml.value.path == path
    assert str(in_toml.value) == f"{in_code.value} (in r.toml)"


def test_validate_config_normalizes_and_refuses_what_is_not_a_config() -> None:
    """Ints where floats go become floats and tuples lists, as TOML decoding does; a
    value that is not a RouterConfig is a ConfigError at ``$``."""
    config = RouterConfig(
        providers=LOCAL,
        routes={"fast": RouteConfig(targets=("local:m",), weights=[2])},  # type: ignore[arg-type]
    )
    checked = validate_config(config)
    assert checked.routes["fast"].targets == ["local:m"]
    assert checked.routes["fast"].weights == [2.0]
    assert type(checked.routes["fast"].weights[0]) is float
    with pytest.raises(ConfigError, match="expected a RouterConfig") as info:
        validate_config({"providers": {}})  # type: ignore[arg-type]
    assert info.value.path == "$"


def test_api_key_env_holding_a_key_is_refused_without_showing_it() -> None:
    """A key pasted into api_key_env (instead of its variable's name) is a ConfigError
    that does not repeat the key."""
    key = "sk-proj-Abc123-do-not-show"
    with pytest.raises(ConfigError) as info:
        validate_config(with_provider(kind="openai", api_key_env=key))
    assert info.value.path == "$.providers.x.api_key_env"
    assert key not in str(info.value)
    assert "OPENAI_API_KEY" in str(info.value)


def test_unknown_fields_suggest_the_field_and_list_them() -> None:
    """An unknown field in TOML names the closest field and every valid one."""
    with pytest.raises(ConfigError) as info:
        decode_config("[providers.x]\nkind = 'mock'\nbreaker = { treshold = 0.5 }")
    assert info.value.path == "$.providers.x.breaker.treshold"
    assert "unknown field 'treshold'" in str(info.value)
    assert "failure_rate_threshold" in str(info.value)


def test_a_post_init_check_becomes_a_config_error_at_its_struct() -> None:
    """A struct whose __post_init__ raises (a check written the old way) gives a
    ConfigError at the struct, with the struct's own message, not a ValueError."""

    class Legacy(msgspec.Struct, frozen=True, kw_only=True):
        size: int = 1

        def __post_init__(self) -> None:
            if self.size < 1:
                raise ValueError(f"`size` must be >= 1, got {self.size}")

    with pytest.raises(ConfigError) as info:
        validate({"nested": {"size": 0}}, dict[str, Legacy])
    assert (info.value.path, str(info.value)) == (
        "$.nested",
        "$.nested: `size` must be >= 1, got 0",
    )


def _field_types(type_: object, seen: set[object]) -> typing.Iterator[object]:
    """``type_`` and every type inside it: members, items, fields of structs."""
    if type_ in seen:
        return
    seen.add(type_)
    yield type_
    inside: typing.Iterable[object] = typing.get_args(type_)
    if typing.get_origin(type_) is Literal:
        inside = ()  # its arguments are values
    elif typing.get_origin(type_) is typing.Annotated:
        inside = inside[:1]  # type: ignore[index]
    elif isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        inside = [f.type for f in msgspec.structs.fields(type_)]
    for inner in inside:
        yield from _field_types(inner, seen)


@pytest.mark.parametrize("root", [RouterConfig, SimScenario])
def test_the_converter_checks_every_config_type_itself(root: type) -> None:
    """Every type in the config trees (the router's, and the simulator's scenarios with
    their tagged latency distributions) is one the converter checks itself, so no message
    comes from another library's error text; a constrained field's bounds included."""
    unknown = [t for t in _field_types(root, set()) if not _known(t)]
    assert unknown == []


#: (TOML under [providers.a] of a scenario, path, message)
SCENARIO_MISTAKES = [
    (
        'latency = { dist = "fixd", seconds = 1 }',
        "$.providers.a.latency.dist",
        "'fixd' is not one of: fixed, uniform, lognormal, mixture — did you mean 'fixed'?",
    ),
    (
        'latency = { dist = "fixed", secs = 1 }',
        "$.providers.a.latency.secs",
        "unknown field 'secs' — did you mean 'seconds'? (Fixed has: seconds)",
    ),
    ("latency = { seconds = 1 }", "$.providers.a.latency", "missing required field 'dist'"),
    (
        "latency = 5",
        "$.providers.a.latency",
        "expected Fixed or Uniform or LogNormal or Mixture, got int 5",
    ),
    (
        'latency = { dist = "mixture", components = [{ weight = "x", latency = '
        '{ dist = "fixed", seconds = 1 } }] }',
        "$.providers.a.latency.components[0].weight",
        "expected float, got str 'x'",
    ),
    (
        'latency = { dist = "mixture", components = [{ weight = 1, latency = '
        '{ dist = "lognormal", median = 0, sigma = 1 } }] }',
        "$.providers.a.latency.components[0].latency",
        "`median` must be > 0",
    ),
]


@pytest.mark.parametrize(
    ("toml", "path", "message"),
    SCENARIO_MISTAKES,
    ids=["tag", "unknown-field", "no-tag", "type", "nested-type", "nested-post-init"],
)
def test_a_scenarios_latency_mistake_names_its_path_and_the_choices(
    toml: str, path: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tagged latency distribution is validated field by field like the rest of the
    config: the tag's choices with a did-you-mean, an unknown field at its own path, the
    value shown; msgspec's conversion is never asked (its text was re-cut before)."""

    def no_convert(*args: object, **kwargs: object) -> object:
        raise AssertionError("validation called msgspec.convert")

    monkeypatch.setattr(msgspec, "convert", no_convert)
    file = tmp_path / "s.toml"
    file.write_text(f"[policies.p]\ntargets = ['a:m']\n[providers.a]\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(file)
    assert (info.value.path, str(info.value)) == (path, f"{path}: {message} (in {file})")


def test_a_code_built_scenario_is_validated_by_simulate() -> None:
    """simulate() checks a scenario built in code as load_scenario checks a file."""
    scenario = SimScenario(
        providers={"x": SimProvider()},
        policies={"p": RouteConfig(targets=["x:m"], hedge=HedgeConfig(delay="soon"))},
    )
    with pytest.raises(ConfigError) as info:
        simulate(scenario, requests=1)
    assert info.value.path == "$.policies.p.hedge.delay"


# --------------------------------------------------------------------------- ${VAR}


def test_strings_reference_the_environment() -> None:
    """``${NAME}`` is replaced, ``${NAME:-default}`` falls back when unset or empty,
    ``$$`` is a ``$`` and any other ``$`` stays; keys are not expanded."""
    config = decode_config(
        """
        [providers.x]
        kind = "openai-compatible"
        base_url = "http://${HOST:-127.0.0.1}:${PORT}/v1"
        headers = { X-Team = "${TEAM:-search}", X-Price = "$$5 or $5", "${NAME}" = "${EMPTY:-e}" }
        """,
        environ={"PORT": "8123", "TEAM": "", "EMPTY": ""},
    )
    provider = config.providers["x"]
    assert provider.base_url == "http://127.0.0.1:8123/v1"
    assert provider.headers == {"X-Team": "search", "X-Price": "$5 or $5", "${NAME}": "e"}


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ("base_url = 'http://h:${PORT}/v1'", "$.providers.x.base_url", ["PORT is not set"]),
        ("headers = { X-A = '${' }", "$.providers.x.headers.X-A", ["${NAME}", "$$"]),
        ("headers = { X-A = '${1X}' }", "$.providers.x.headers.X-A", ["${NAME}"]),
        ("api_key_env = '${VAR}'", "$.providers.x.api_key_env", ["names the variable"]),
        (
            "headers = { Authorization = 'Bearer ${TOKEN}' }",
            "$.providers.x.headers.Authorization",
            ["api_key_env"],
        ),
    ],
)
def test_bad_references_are_config_errors_at_their_path(
    value: str, path: str, words: list[str]
) -> None:
    """An unset variable without a default, a malformed ``${``, and a reference where a
    secret would land in the config (api_key_env, a secret header) are ConfigErrors
    naming the path."""
    environ = {"VAR": "sk-secret-value", "TOKEN": "sk-secret-value"}
    with pytest.raises(ConfigError) as info:
        decode_config(f"[providers.x]\nkind = 'openai'\n{value}\n", environ=environ)
    assert info.value.path == path
    for word in words:
        assert word in str(info.value)
    assert "sk-secret-value" not in str(info.value)


@given(st.text(max_size=30))
def test_doubling_every_dollar_reads_back_unchanged(text: str) -> None:
    """Invariant: any string written with each ``$`` doubled decodes to itself."""
    raw = {"providers": {"x": {"kind": "mock", "mock": {"reply": text}}}}
    mock = decode_config(to_toml(raw), environ={}).providers["x"].mock
    assert mock is not None
    assert mock.reply == text


def test_load_config_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_config expands from os.environ unless given an environ."""
    path = tmp_path / "router.toml"
    path.write_text("[providers.x]\nkind = 'openai-compatible'\nbase_url = '${URL}'\n")
    monkeypatch.setenv("URL", "http://127.0.0.1:9/v1")
    assert load_config(path).providers["x"].base_url == "http://127.0.0.1:9/v1"
    assert load_config(path, environ={"URL": "u"}).providers["x"].base_url == "u"


async def test_one_file_serves_an_upstream_on_any_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a real loopback socket: the file's base_url takes the fake upstream's port
    from the environment, so the same file works wherever the upstream listens."""
    monkeypatch.setenv("UPSTREAM_KEY", "sk-test-0000")
    path = tmp_path / "router.toml"
    path.write_text(
        "[providers.up]\nkind = 'openai-compatible'\napi_key_env = 'UPSTREAM_KEY'\n"
        "base_url = 'http://127.0.0.1:${UPSTREAM_PORT}/echo/v1'\n"
    )
    async with open_fake_upstream({}) as upstream:
        port = httpx.URL(upstream.base_url("echo", "openai-compatible")).port
        config = load_config(path, environ={"UPSTREAM_PORT": str(port)})
        async with open_router(config) as router:
            response = await router.complete(
                ChatRequest(model="up:m", messages=[Message.user("over the wire")])
            )
    assert "over the wire" in response.text
    assert len(upstream.requests) == 1
