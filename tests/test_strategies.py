"""Pluggable strategies: a user's strategy, in a file outside the package, named by
import path, used by the router (over the fake upstream), by ``plan()`` and by the
simulator; every way naming one can fail (a ConfigError at its path); every way a
plan can be wrong, caught at the boundary; and the built-in strategies as objects of
the same protocol, giving exactly the plans they gave before.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from providers import ConfigError, NoRoute
from providers.testing import Scenario, open_fake_upstream
from router import ChatRequest, Message, open_router
from router._policy import HealthStatus, StrategyName, _order
from router.config import ProviderConfig, RouteConfig, RouterConfig, decode_config
from router.policy import (
    BuiltinStrategy,
    Candidate,
    Exclusion,
    Needs,
    Plan,
    Strategy,
    TargetHealth,
    estimated_cost,
    plan_problem,
    plan_route,
    unfit,
)
from router.testing import load_scenario, simulate
from tests import test_policy as policy_cases

# --------------------------------------------------------------------------- the user's file

POLICIES = '''
"""A user's strategies, outside the package."""
from router.policy import Exclusion, Plan, estimated_cost, health_of, over_budget, unfit

CALLS = []


def cheapest_healthy(candidates, needs, health, now, rng):
    """Known prices first, cheapest first; unfit, over-budget and unhealthy excluded."""
    CALLS.append(now)
    usable, excluded = [], []
    for c in candidates:
        why = unfit(c, needs) or over_budget(c, needs, health)
        if why is None and health_of(health, c).status == "unhealthy":
            why = health_of(health, c).reason or "unhealthy"
        if why is None:
            usable.append(c)
        else:
            excluded.append(Exclusion(c.target, why))
    cost = lambda c: estimated_cost(c, needs)  # noqa: E731
    usable.sort(key=lambda c: (cost(c) is None, cost(c) or 0.0))
    return Plan(targets=tuple(usable), excluded=tuple(excluded))


class Reverse:
    """An object strategy: the route's order, reversed."""

    def __call__(self, candidates, needs, health, now, rng):
        return Plan(targets=tuple(reversed(candidates)))


reverse = Reverse()

#: What ``broken`` does: set by the tests.
MODE = ["ok"]


def broken(candidates, needs, health, now, rng):
    """A strategy that goes wrong in the way MODE[0] says."""
    mode = MODE[0]
    everything = Plan(targets=tuple(candidates))
    if mode == "raises":
        raise ValueError("no opinion today")
    if mode == "none":
        return None
    if mode == "unknown":
        return Plan(targets=(*candidates, candidates[0].__class__(provider="zz", model="m")))
    if mode == "duplicate":
        return Plan(targets=(candidates[0], *candidates))
    if mode == "missing":
        return Plan(targets=tuple(candidates[1:]))
    if mode == "both":
        return Plan(targets=tuple(candidates), excluded=(Exclusion(candidates[0].target, "x"),))
    if mode == "no-reason":
        return Plan(targets=tuple(candidates[1:]), excluded=(Exclusion(candidates[0].target, ""),))
    if mode == "list":
        return Plan(targets=list(candidates))
    if mode == "changed":
        import msgspec
        return Plan(targets=tuple(msgspec.structs.replace(c, input_price=0.0) for c in candidates))
    if mode == "bad-index":
        return Plan(targets=(candidates[0].__class__(provider="a", model="m", index="0"), *candidates[1:]))
    if mode == "unprintable":
        class Odd(Exception):
            def __str__(self):
                raise RuntimeError("no words")
        raise Odd()
    return everything


def two_args(candidates, needs):
    return None


async def async_strategy(candidates, needs, health, now, rng):
    return None


not_callable = 42
'''

TOML = """
[providers.a]
kind = "openai"
api_key_env = "STRATEGY_TEST_KEY"
base_url = "${UPSTREAM_A}"

[providers.b]
kind = "openai"
api_key_env = "STRATEGY_TEST_KEY"
base_url = "${UPSTREAM_B}"

[models."a:gpt-4o"]
input_price = 5.0
output_price = 15.0

[models."b:gpt-4o-mini"]
input_price = 0.15
output_price = 0.60

[routes.fast]
targets = ["a:gpt-4o", "b:gpt-4o-mini"]
strategy = "userpolicies:cheapest_healthy"
"""


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The user's strategies as module ``userpolicies`` in tmp_path (on sys.path), with
    more modules that fail to import; all forgotten afterwards."""
    (tmp_path / "userpolicies.py").write_text(POLICIES)
    (tmp_path / "raising_policies.py").write_text("raise ValueError('boom at import')\n")
    (tmp_path / "needy_policies.py").write_text("import nosuchdependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield importlib.import_module("userpolicies")
    for name in ("userpolicies", "raising_policies", "needy_policies"):
        sys.modules.pop(name, None)


def chat(model: str, text: str = "hi") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)])


def mock_config(strategy: object, targets: Sequence[str] = ("a:m", "b:m")) -> RouterConfig:
    """Mock providers a, b, c and route ``r`` over ``targets`` with ``strategy``."""
    return RouterConfig(
        providers={n: ProviderConfig(kind="mock") for n in "abc"},
        routes={"r": RouteConfig(targets=list(targets), strategy=strategy)},  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- in use


async def test_a_user_strategy_named_in_toml_routes_over_the_fake_upstream(
    policies: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The definition of done, first half: a strategy in a file outside the package,
    named in TOML, plans every request of the route (the cheaper target answers, over
    real loopback sockets), and ``router.plan`` shows the same plan."""
    monkeypatch.setenv("STRATEGY_TEST_KEY", "sk-test-strategy")
    async with open_fake_upstream({"a": Scenario(), "b": Scenario()}) as up:
        environ = {
            "UPSTREAM_A": up.base_url("a", "openai"),
            "UPSTREAM_B": up.base_url("b", "openai"),
        }
        config = decode_config(TOML, environ=environ)
        async with open_router(config) as router:
            plan = router.plan(chat("fast"))
            assert [c.target for c in plan.targets] == ["b:gpt-4o-mini", "a:gpt-4o"]
            for _ in range(3):
                resp = await router.complete(chat("fast"))
                assert resp.provider == "b"
            assert [r.scenario for r in up.requests] == ["b", "b", "b"]
            assert len(policies.CALLS) == 4  # plan() and three requests
            assert router.statistics().strategy_errors == 0


async def test_a_user_strategy_object_and_a_callable_given_in_code(policies: Any) -> None:
    """An object with ``__call__`` named by import path, and a function passed directly
    in RouteConfig.strategy, both plan the route; a one-target route with a user
    strategy calls it too (the lone-target fast path is for the built-ins only)."""
    async with open_router(mock_config("userpolicies:reverse")) as router:
        assert [c.target for c in router.plan("r").targets] == ["b:m", "a:m"]
        assert (await router.complete(chat("r"))).provider == "b"

    def refuse(
        candidates: Sequence[Candidate],
        needs: Needs,
        health: Mapping[str, TargetHealth],
        now: float,
        rng: random.Random,
    ) -> Plan:
        return Plan(targets=(), excluded=tuple(Exclusion(c.target, "refused") for c in candidates))

    async with open_router(mock_config(refuse, targets=["a:m"])) as router:
        with pytest.raises(NoRoute, match=r"a:m: refused"):
            await router.complete(chat("r"))
        assert router.statistics().strategy_errors == 0  # a valid, empty plan


def test_a_user_strategy_runs_unchanged_in_the_simulator(policies: Any, tmp_path: Path) -> None:
    """A scenario TOML names the user's strategy as a policy's strategy: ``simulate``
    runs it for every request, beside a built-in one, and it picks the cheaper
    provider every time (the cost says so)."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(
        """
requests = 20
rate = 10.0
seed = 3
input_tokens = 1000

[providers.a]
latency = { dist = "fixed", seconds = 0.1 }
input_price = 5.0
output_price = 15.0

[providers.b]
latency = { dist = "fixed", seconds = 0.3 }
input_price = 0.15
output_price = 0.60

[policies.fallback]
targets = ["a:model", "b:model"]

[policies.cheapest]
targets = ["a:model", "b:model"]
strategy = "userpolicies:cheapest_healthy"
"""
    )
    results = {r.policy: r for r in simulate(load_scenario(scenario))}
    assert len(policies.CALLS) == 20
    cheapest, fallback = results["cheapest"], results["fallback"]
    assert cheapest.succeeded == fallback.succeeded == 20
    assert cheapest.p50 == pytest.approx(0.3)
    assert fallback.p50 == pytest.approx(0.1)
    assert cheapest.cost < fallback.cost / 10


def test_cli_simulate_resolves_a_strategy_from_the_working_directory(
    policies: Any, tmp_path: Path
) -> None:
    """``llm-router simulate scenario.toml`` (the console script, whose sys.path does
    not hold the working directory) finds ``userpolicies`` there, as ``python -m``
    would, and prints the user's policy's row."""
    script = shutil.which("llm-router")
    if script is None:
        pytest.skip("the llm-router console script is not installed")
    (tmp_path / "scenario.toml").write_text(
        'requests = 10\n[providers.a]\n[providers.b]\n[policies.mine]\ntargets = ["a:m", "b:m"]\n'
        'strategy = "userpolicies:reverse"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(
        [script, "simulate", "scenario.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:1] == ["mine"] for line in proc.stdout.splitlines())


# --------------------------------------------------------------------------- naming errors

BAD_NAMES = [
    ("least_cost", "is not one of: fallback, weighted, least-latency, least-cost, least-busy"),
    ("least_cost", "did you mean 'least-cost'?"),
    ("not a path", "nor an import path 'package.module:name'"),
    ("nosuchmodule_xyz.sub:f", "no module named 'nosuchmodule_xyz'"),
    ("nosuchmodule_xyz.sub:f", "is its directory on sys.path / PYTHONPATH?"),
    ("raising_policies:f", "importing 'raising_policies' raised ValueError: boom at import"),
    (
        "needy_policies:f",
        "importing 'needy_policies' raised ModuleNotFoundError: "
        "No module named 'nosuchdependency_xyz'",
    ),
    ("userpolicies:cheapest", "'userpolicies' has no attribute 'cheapest'"),
    ("userpolicies:cheapest", "did you mean 'cheapest_healthy'?"),
    ("userpolicies:Reverse.nope", "'userpolicies.Reverse' has no attribute 'nope'"),
    ("userpolicies:not_callable", "is a int, not callable"),
    ("userpolicies:Reverse", "is a class (Reverse); name a function or an instance"),
    ("userpolicies:async_strategy", "is async; a strategy is a plain function"),
    ("userpolicies:two_args", "takes (candidates, needs); a strategy is called with 5"),
]


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
def test_a_bad_strategy_name_is_a_config_error_at_its_path(
    policies: Any, name: str, message: str
) -> None:
    """Every way an import path (or name) can fail is a ConfigError at
    ``$.routes.fast.strategy`` saying why: not a name nor a path, no such module, its
    import raised, no such attribute, not callable, a class, async, wrong arity."""
    text = f'[providers.a]\nkind = "mock"\n[routes.fast]\ntargets = ["a:m"]\nstrategy = "{name}"\n'
    with pytest.raises(ConfigError) as info:
        decode_config(text, source="router.toml")
    assert info.value.path == "$.routes.fast.strategy"
    assert message in str(info.value)
    assert "(in router.toml)" in str(info.value)


async def test_a_bad_strategy_given_in_code_is_a_config_error_at_its_path(policies: Any) -> None:
    """In code: a non-callable, a callable of the wrong arity and an async function are
    refused by open_router with the field's path; a bad import path in a simulator
    scenario is refused at the policy's path."""
    for value, message in [
        (3, "expected str or Strategy, got int 3"),
        (lambda a, b: None, "a strategy is called with 5 positional arguments"),
        (policies.async_strategy, "is async"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            async with open_router(mock_config(value)):
                pass
        assert info.value.path == "$.routes.r.strategy"
    path = Path(policies.__file__).parent / "bad-scenario.toml"
    path.write_text('[providers.a]\n[policies.p]\ntargets = ["a:m"]\nstrategy = "x:y"\n')
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.path == "$.policies.p.strategy"
    assert "no module named 'x'" in str(info.value)


# --------------------------------------------------------------------------- the boundary

BOUNDARY = [
    ("raises", "failed: ValueError: no opinion today"),
    ("none", "failed: returned NoneType, not a Plan"),
    ("unknown", "failed: planned 'zz:m', which is not among the candidates"),
    ("duplicate", "failed: planned 'a:m' twice"),
    ("missing", "failed: neither planned nor excluded: a:m"),
    ("both", "failed: both planned and excluded 'a:m'"),
    ("no-reason", "failed: excluded 'a:m' without a reason"),
    ("list", "failed: returned a Plan whose targets and excluded are not tuples"),
    ("changed", "failed: planned a changed copy of 'a:m' (a copy may change only panic)"),
    ("bad-index", "failed: planned 'a:m' with index '0', not an int"),
    ("unprintable", "failed: Odd: <the exception's str() raised>"),
]


@pytest.mark.parametrize(("mode", "message"), BOUNDARY)
async def test_a_failing_strategy_fails_the_request_and_the_router_serves_on(
    policies: Any, caplog: pytest.LogCaptureFixture, mode: str, message: str
) -> None:
    """A user strategy that raises or returns an invalid plan: the request (and
    ``plan()``) fails with a non-retryable NoRoute naming the strategy and the route
    (the exception as ``__cause__``), counted in ``strategy_errors``, logged once as a
    WARNING without the request's content; other routes keep serving, and so does this
    one when the strategy plans again (logged at INFO)."""
    caplog.set_level(logging.INFO, logger="trio_llm_router")
    policies.MODE[0] = mode
    async with open_router(mock_config("userpolicies:broken")) as router:
        for _ in range(2):
            with pytest.raises(NoRoute) as info:
                await router.complete(chat("r", "secret prompt text"))
            assert str(info.value) == f"strategy 'userpolicies:broken' for route 'r' {message}"
            assert not info.value.retryable
            if mode == "raises":
                assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(NoRoute, match="strategy 'userpolicies:broken'"):
            router.plan(chat("r"))
        assert router.statistics().strategy_errors == 3
        assert (await router.complete(chat("c:m"))).provider == "c"
        policies.MODE[0] = "ok"
        assert (await router.complete(chat("r"))).provider == "a"
        assert router.statistics().strategy_errors == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "strategy 'userpolicies:broken' failed" in warnings[0].getMessage()
    assert "route r" in warnings[0].getMessage()
    assert all("secret prompt" not in r.getMessage() for r in caplog.records)
    assert any("planned again" in r.getMessage() for r in caplog.records)


def test_plan_problem_accepts_every_built_in_plan() -> None:
    """Invariant: the boundary check finds nothing wrong with any plan a built-in
    strategy makes (so skipping it for built-ins loses nothing)."""

    @settings(max_examples=300, deadline=None)
    @given(policy_cases.situations())
    def check(situation: Any) -> None:
        candidates, name, needs, health, seed = situation
        plan = BuiltinStrategy(name)(candidates, needs, health, 0.0, random.Random(seed))
        assert plan_problem(plan, candidates) is None

    check()


# --------------------------------------------------------------------------- the built-ins


def original_plan_route(
    candidates: Sequence[Candidate],
    strategy: StrategyName,
    needs: Needs,
    health: Mapping[str, TargetHealth],
    now: float,
    rng: random.Random,
    *,
    panic_threshold: float = 0.5,
) -> Plan:
    """plan_route as it was before the Strategy protocol (commit 7e464ab), verbatim but
    for names: the oracle the built-in strategy objects are held to."""
    del now
    healthy = TargetHealth()
    excluded: list[Exclusion] = []
    capable: list[Candidate] = []
    for c in candidates:
        reason = unfit(c, needs)
        if reason is None:
            left = health.get(c.provider, healthy).budget_left
            cost = None if left is None else estimated_cost(c, needs)
            if cost is not None and left is not None and cost > left:
                reason = f"~${cost:.4f} would cross its provider's spend cap (${left:.4f} left)"
        if reason is None:
            capable.append(c)
        else:
            excluded.append(Exclusion(c.target, reason))
    groups: dict[HealthStatus, list[Candidate]] = {"healthy": [], "degraded": [], "unhealthy": []}
    for c in capable:
        groups[health.get(c.provider, healthy).status].append(c)
    ordered = _order(groups["healthy"], strategy, needs, health, rng)
    ordered += _order(groups["degraded"], strategy, needs, health, rng)
    unhealthy = groups["unhealthy"]
    if not unhealthy:
        return Plan(targets=tuple(ordered), excluded=tuple(excluded))
    if len(ordered) < panic_threshold * len(capable):
        last = _order(unhealthy, strategy, needs, health, rng)
        ordered += [msgspec.structs.replace(c, panic=True) for c in last]
        return Plan(targets=tuple(ordered), excluded=tuple(excluded), panic=True)
    if ordered:
        for c in unhealthy:
            why = health.get(c.provider, healthy).reason or "unhealthy"
            excluded.append(Exclusion(c.target, why))
    else:
        ordered = _order(unhealthy, strategy, needs, health, rng)
    return Plan(targets=tuple(ordered), excluded=tuple(excluded))


@settings(max_examples=500, deadline=None)
@given(policy_cases.situations(), policy_cases.st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_the_built_in_strategy_objects_plan_as_plan_route_did(
    situation: Any, threshold: float
) -> None:
    """Invariant: for every route, request, health and seed, ``BuiltinStrategy(name,
    threshold)`` (what the router calls) and ``plan_route`` give exactly the plan the
    pre-protocol plan_route gave, drawing the same numbers from the rng."""
    candidates, name, needs, health, seed = situation
    expected_rng, rng, shorthand_rng = (random.Random(seed) for _ in range(3))
    expected = original_plan_route(
        candidates, name, needs, health, 1.0, expected_rng, panic_threshold=threshold
    )
    strategy = BuiltinStrategy(name, threshold)
    assert isinstance(strategy, Strategy)
    assert strategy(candidates, needs, health, 1.0, rng) == expected
    assert rng.random() == expected_rng.random()
    shorthand = plan_route(
        candidates, name, needs, health, 1.0, shorthand_rng, panic_threshold=threshold
    )
    assert shorthand == expected


async def test_the_router_calls_built_in_strategies_through_the_protocol() -> None:
    """A route's built-in strategy is a BuiltinStrategy carrying the route's panic
    threshold (the router's default where the route sets none); a lone built-in
    route keeps the fast path, a lone user-strategy route does not; an unknown
    built-in name is a ValueError naming the choices."""
    config = RouterConfig(
        providers={n: ProviderConfig(kind="mock") for n in "ab"},
        routes={
            "x": RouteConfig(targets=["a:m", "b:m"], strategy="least-cost", panic_threshold=0.2),
            "y": RouteConfig(targets=["a:m"]),
        },
        panic_threshold=0.7,
    )
    async with open_router(config) as router:
        routes = router._routes.routes
        assert routes["x"].strategy == BuiltinStrategy("least-cost", 0.2)
        assert routes["y"].strategy == BuiltinStrategy("fallback", 0.7)
        assert routes["y"].lone
        assert not routes["x"].lone
    with pytest.raises(ValueError, match="unknown strategy 'cheap'; the built-in ones: fallback"):
        BuiltinStrategy("cheap")  # type: ignore[arg-type]
