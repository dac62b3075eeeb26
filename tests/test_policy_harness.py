"""The stateful harness (``router.testing.RouterMachine``) and the pytest plugin.

The machine's built-in invariants each fail when what they guard is broken (a strategy
that ignores open breakers, a hang, statistics or spend that do not add up), hold for
the built-in strategies, run on virtual time and replay exactly; a subclass adds its own
invariants and chooses what it routes by class attributes or ``make_config``.  The
plugin's fixtures work in a user's three-line test file and leave other tests alone.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import invariant, run_state_machine_as_test

from router.config import HedgeConfig, RouterConfig
from router.errors import ConfigError, LLMError
from router.policy import Plan
from router.testing import RouterMachine, harness_config

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(
    max_examples=12,
    stateful_step_count=12,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def in_order(candidates: Any, needs: Any, health: Any, now: float, rng: Any) -> Plan:
    """A tempting strategy: every candidate, in the route's order, health ignored."""
    return Plan(targets=tuple(candidates))


class NaiveMachine(RouterMachine):
    strategy = in_order


def trip_alpha(machine: RouterMachine) -> None:
    """Fail alpha and send until its breaker opens (its default: 10 calls, 50% failing)."""
    machine.flip(0, "fail")
    for _ in range(4):
        machine.send(4)


def test_open_breaker_invariant_refutes_a_strategy_that_ignores_health() -> None:
    """A strategy that plans alpha with its breaker open breaks the breaker invariant,
    and the violation names the request, the provider and the time."""
    machine = NaiveMachine()
    try:
        trip_alpha(machine)
        machine.send(1)
        with pytest.raises(AssertionError, match=r"'alpha'.*breaker was open"):
            machine.no_first_attempt_to_an_open_breaker()
    finally:
        machine.teardown()


def test_open_breaker_invariant_holds_for_fallback_and_allows_panic() -> None:
    """The same steps under ``fallback`` break nothing; with every provider failing the
    route panics and its first attempts to open breakers are allowed."""
    machine = RouterMachine()
    try:
        trip_alpha(machine)
        machine.send(1)
        assert machine.results[-1].response is not None
        assert machine.results[-1].response.provider == "beta"
        machine.flip(1, "fail")
        machine.flip(2, "fail")
        for _ in range(8):
            machine.send(4)
        assert machine.statistics().panic_routed > 0
        machine.no_first_attempt_to_an_open_breaker()
        machine.every_request_ended()
        machine.statistics_add_up()
    finally:
        machine.teardown()


def test_hypothesis_finds_the_naive_strategy_out() -> None:
    """Driven by hypothesis, the machine finds the health-blind strategy's violation."""
    found = settings(FAST, max_examples=200, stateful_step_count=30, phases=[Phase.generate])
    with pytest.raises(AssertionError, match="breaker was open"):
        run_state_machine_as_test(NaiveMachine, settings=found)


@pytest.mark.parametrize("strategy", ["fallback", "least-cost", "least-latency", "weighted"])
def test_built_in_strategies_keep_every_invariant(strategy: str) -> None:
    """Invariants: every request ends typed, no first attempt to an open breaker outside
    panic, statistics add up, for each built-in strategy (a spend cap included)."""
    machine = type("Machine", (RouterMachine,), {"strategy": strategy, "budget": 0.01})
    run_state_machine_as_test(machine, settings=FAST)


def picky(candidates: Any, needs: Any, health: Any, now: float, rng: Any) -> Plan:
    """A strategy that is not total: it raises once any provider is unhealthy."""
    if any(h.status == "unhealthy" for h in health.values()):
        raise RuntimeError("did not expect an unhealthy provider")
    return Plan(targets=tuple(candidates))


def test_a_strategy_that_raises_breaks_an_invariant_naming_it() -> None:
    """A strategy error is a typed NoRoute for the request (naming the user's strategy,
    not the harness's wrapper) and breaks the strategy invariant."""
    machine = type("Picky", (RouterMachine,), {"strategy": picky})()
    try:
        machine.strategy_never_failed()
        trip_alpha(machine)
        machine.send(1)
        error = machine.results[-1].error
        assert error is not None
        assert type(error).__name__ == "NoRoute"
        assert f"strategy '{__name__}:picky'" in str(error)
        with pytest.raises(AssertionError, match="the strategy failed"):
            machine.strategy_never_failed()
    finally:
        machine.teardown()


def test_a_hang_is_a_failed_step_on_virtual_time() -> None:
    """A request that never ends fails its step after ``step_timeout`` virtual seconds,
    at once in real time."""

    class Hanging(RouterMachine):
        latency = math.inf

    machine = Hanging()
    try:
        with pytest.raises(AssertionError, match="still running after 3600 s of virtual"):
            machine.send(1)
        assert machine.now() == 3600.0

        async def forever(router: Any) -> None:
            await trio.sleep_forever()

        with pytest.raises(AssertionError, match="still running after 3600 s of virtual"):
            machine.run(forever)
        assert machine.now() == 7200.0
    finally:
        machine.teardown()


def test_statistics_and_spend_invariants_fail_on_numbers_that_do_not_add_up() -> None:
    """The statistics and spend invariants reject a snapshot that breaks them."""
    machine = RouterMachine()
    try:
        machine.send(2)
        real = machine.statistics()
        broken = msgspec.structs.replace(real, requests=real.requests + 1)
        machine.statistics = lambda: broken  # type: ignore[method-assign]
        with pytest.raises(AssertionError):
            machine.statistics_add_up()
    finally:
        machine.teardown()

    capped = type("Capped", (RouterMachine,), {"budget": 0.001})()
    try:
        capped.send(1)
        stats = capped.statistics()
        (cap,) = stats.budgets
        over = msgspec.structs.replace(cap, spent=cap.limit * 1.01)
        capped.statistics = lambda: msgspec.structs.replace(  # type: ignore[method-assign]
            stats, budgets=[over]
        )
        with pytest.raises(AssertionError):
            capped.spend_within_caps()
    finally:
        capped.teardown()


def test_spend_cap_holds_under_the_machine() -> None:
    """Invariant: under a cap that one request's estimate nearly fills, spend never
    crosses it: concurrent requests beyond it are refused with BudgetExceeded."""
    machine = type("Capped", (RouterMachine,), {"budget": 0.0003})()
    try:
        for _ in range(3):
            machine.send(4)
            machine.spend_within_caps()
        errors = {type(r.error).__name__ for r in machine.results if r.error is not None}
        assert errors == {"BudgetExceeded"}
        assert any(r.response is not None for r in machine.results)
    finally:
        machine.teardown()


class CheapestFirst(RouterMachine):
    """A user's machine, by class attributes: least-cost over three providers, with an
    invariant of its own."""

    providers: ClassVar[tuple[str, ...]] = ("cheap", "mid", "dear")
    strategy = "least-cost"
    checked = 0

    @invariant()
    def answers_come_from_providers_that_can_answer(self) -> None:
        """No answer from a provider scripted to fail or be rate limited."""
        for result in self.results[self.checked :]:
            if result.response is not None:
                assert self.behaviours[result.response.provider] in ("ok", "slow"), result
        self.checked = len(self.results)


def test_a_subclass_adds_invariants_and_chooses_by_class_attributes() -> None:
    """A subclass's own invariant runs after every step, over its own providers."""
    run_state_machine_as_test(CheapestFirst, settings=FAST)
    machine = CheapestFirst()
    try:
        machine.send(2)
        assert {r.response.provider for r in machine.results if r.response} == {"cheap"}
        machine.answers_come_from_providers_that_can_answer()
        machine.checked = 0
        machine.behaviours["cheap"] = "fail"  # as if cheap had answered while failing
        with pytest.raises(AssertionError):
            machine.answers_come_from_providers_that_can_answer()
    finally:
        machine.teardown()


class Hedged(RouterMachine):
    """A user's machine, by the hook: the default configuration plus hedging."""

    def make_config(self) -> RouterConfig:
        config = harness_config(["a", "b"], route=self.route)
        route = msgspec.structs.replace(
            config.routes[self.route], hedge=HedgeConfig(delay=0.5, max_attempts=2)
        )
        return msgspec.structs.replace(config, routes={self.route: route})


def test_make_config_configures_the_router() -> None:
    """The hook's configuration is the router's: a slow primary is hedged to b at 0.5 s."""
    machine = Hedged()
    try:
        machine.flip(0, "slow")
        machine.send(1)
        (result,) = machine.results
        assert result.response is not None
        assert result.response.provider == "b"
        assert result.ended - result.sent == 1.5
        assert machine.statistics().hedges == 1
    finally:
        machine.teardown()
    run_state_machine_as_test(Hedged, settings=FAST)


class Recorder(RouterMachine):
    logs: ClassVar[list[list[tuple[str, float, str | None]]]] = []

    def teardown(self) -> None:
        self.logs.append(
            [(type(e).__name__, e.time, getattr(e, "provider", None)) for e in self.events]
        )
        super().teardown()


def test_deterministic_for_a_seed() -> None:
    """Two runs with the same hypothesis seed give the same events at the same times."""
    Recorder.logs.clear()
    run_state_machine_as_test(Recorder, settings=FAST)
    first = list(Recorder.logs)
    Recorder.logs.clear()
    run_state_machine_as_test(Recorder, settings=FAST)
    assert Recorder.logs == first
    assert sum(len(log) for log in first) > 50


def test_a_step_error_reaches_the_rule_and_a_bad_config_the_constructor() -> None:
    """Errors are typed and raised where they happen: a step's in the rule, a config's
    ConfigError from the machine's constructor (the trio thread is not left behind)."""
    machine = RouterMachine()
    try:

        async def boom(router: Any) -> None:
            raise LLMError("from a step")

        with pytest.raises(LLMError, match="from a step"):
            machine.run(boom)
        machine.send(1)  # the machine still works
    finally:
        machine.teardown()

    class Unknown(RouterMachine):
        strategy = "no-such-strategy"

    with pytest.raises(ConfigError, match=r"^\$\.routes\.policy\.strategy: 'no-such-strategy'"):
        Unknown()

    class Misnamed(RouterMachine):
        route = "fast"

        def make_config(self) -> RouterConfig:
            return harness_config(["a", "b"])  # route "policy", not "fast"

    with pytest.raises(ValueError, match=r"route is 'fast'.*routes: \['policy'\]"):
        Misnamed()


# -- the pytest plugin


THREE_LINES = """
from router import ChatRequest, Message
async def test_answers(mock_router):
    assert (await mock_router.complete(ChatRequest(model="policy", messages=[Message.user("hi")]))).provider == "primary"
"""


def run_user_file(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "router._plugin", "-p", "no:cacheprovider", *args)


def pytest11() -> dict[str, str]:
    """The ``pytest11`` entry points pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"]["pytest11"])


def test_the_entry_point_is_declared() -> None:
    """pyproject.toml registers router._plugin as a pytest11 entry point, under its module
    name (so ``-p router._plugin`` beside the installed entry point is a no-op)."""
    assert pytest11() == {"router._plugin": "router._plugin"}


@pytest.mark.parametrize("also_p", [False, True])
def test_the_plugin_loads_through_the_declared_entry_point(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, also_p: bool
) -> None:
    """Installed as pyproject.toml declares it (a dist-info holding its pytest11 entry
    points, on the path), the plugin loads with no ``-p``; with ``-p router._plugin``
    as well it is not registered twice."""
    site = pytester.mkdir("site")
    info = site / "trio_llm_router_probe-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trio-llm-router-probe\n")
    lines = "".join(f"{name} = {target}\n" for name, target in pytest11().items())
    (info / "entry_points.txt").write_text(f"[pytest11]\n{lines}")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{ROOT}")
    pytester.makepyfile(test_user=THREE_LINES)
    extra = ["-p", "router._plugin"] if also_p else []
    pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra).assert_outcomes(passed=1)


def test_a_three_line_user_file_runs(pytester: pytest.Pytester) -> None:
    """A user's file of three lines gets a router on virtual time, run as a trio test."""
    run_user_file(pytester, THREE_LINES).assert_outcomes(passed=1)


def test_the_marker_configures_and_time_is_virtual(pytester: pytest.Pytester) -> None:
    """The marker chooses providers and strategy; providers re-script; time is exact."""
    source = """
import pytest, trio
from router import ChatRequest, Message
from router.errors import ServerError
from router.policy import Plan

def backwards(candidates, needs, health, now, rng):
    return Plan(targets=tuple(reversed(candidates)))

@pytest.mark.mock_router(providers=["one", "two"], strategy=backwards)
async def test_strategy_then_fail_over(mock_router):
    request = ChatRequest(model="policy", messages=[Message.user("hi")])
    assert (await mock_router.complete(request)).provider == "two"
    assert trio.current_time() == 1.0
    mock_router.provider("two").set_default(ServerError("down"))
    assert (await mock_router.complete(request)).provider == "one"
    assert trio.current_time() == 2.0  # the error at once, then one's 1 s

def test_scripted(scripted_provider):
    mock = scripted_provider("first", name="x", latency=2.0)
    assert mock.name == "x"
"""
    run_user_file(pytester, source).assert_outcomes(passed=2)


def test_bad_marker_arguments_are_a_clear_error(pytester: pytest.Pytester) -> None:
    """An unknown marker argument errors the test naming it, not a deep traceback."""
    source = """
import pytest
@pytest.mark.mock_router(strategies="fallback")
async def test_x(mock_router):
    pass
"""
    result = run_user_file(pytester, source)
    result.assert_outcomes(errors=1)
    assert "TypeError: @pytest.mark.mock_router got unknown arguments ['strategies']" in str(
        result.stdout
    )


def test_the_plugin_leaves_other_tests_alone(pytester: pytest.Pytester) -> None:
    """A suite that asks for no fixture of ours runs the same with the plugin as without."""
    source = """
async def test_not_trio():
    pass

def test_plain():
    pass
"""
    pytester.makepyfile(test_user=source)
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:trio")
    with_it = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:trio", "-p", "router._plugin"
    )
    assert with_it.parseoutcomes() == without.parseoutcomes()
