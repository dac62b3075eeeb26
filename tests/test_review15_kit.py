"""Review of issue 15's policy-testing kit: check_policy calls a strategy as the router
does, catches state kept between calls, and reports a failure that does not recur as
non-determinism in a readable AssertionError (not hypothesis's Flaky group)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest
import trio
import trio.testing
from hypothesis import strategies as st

from providers import NoRoute
from router import open_router
from router.policy import BuiltinStrategy, Candidate, Needs, Plan, TargetHealth
from router.testing import (
    MockProvider,
    MockResponse,
    PolicyInputs,
    check_policy,
    harness_config,
    policy_inputs,
)

Health = Mapping[str, TargetHealth]
_least_cost = BuiltinStrategy("least-cost")


def copies_its_candidates(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Correct over a list; the router passes a tuple, which has no ``copy()``."""
    pool = candidates.copy()  # type: ignore[attr-defined]
    return _least_cost(pool, needs, health, now, rng)


def test_check_policy_passes_the_candidates_as_the_router_does() -> None:
    """A strategy that needs a list (``candidates.copy()``) fails every request in the
    router; check_policy fails it too ("total"), saying the candidates are a tuple."""
    with pytest.raises(AssertionError) as info:
        check_policy(copies_its_candidates, max_examples=20)
    message = str(info.value)
    assert message.startswith("check_policy(copies_its_candidates): total: raised AttributeError")
    assert "the candidates are a tuple, as the router passes them" in message

    async def main() -> None:
        config = harness_config(["a", "b"], strategy=copies_its_candidates)
        mocks = {n: MockProvider(name=n, default=MockResponse(text="ok")) for n in config.providers}
        async with open_router(config, providers=mocks) as router:
            with pytest.raises(NoRoute, match="has no attribute 'copy'"):
                router.plan("policy")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class RoundRobin:
    """Tempting and impure: swaps the first two targets on every other call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self,
        candidates: Sequence[Candidate],
        needs: Needs,
        health: Health,
        now: float,
        rng: random.Random,
    ) -> Plan:
        self.calls += 1
        plan = _least_cost(candidates, needs, health, now, rng)
        targets = list(plan.targets)
        if self.calls % 2 == 0:
            targets[:2] = targets[1::-1]
        return Plan(targets=tuple(targets), excluded=plan.excluded, panic=plan.panic)


def test_state_kept_between_calls_fails_as_nondeterministic() -> None:
    """A round-robin counter with period two (one plan, then the other) fails
    "deterministic" with both plans: the determinism check compares two calls in a row."""
    with pytest.raises(AssertionError) as info:
        check_policy(RoundRobin(), max_examples=100)
    message = str(info.value)
    assert (
        "): deterministic: a second call with the same inputs and seed gave another plan" in message
    )
    assert "second plan: targets [" in message


class FailsOnce:
    """Raises on its first call with a candidate, never again."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(
        self,
        candidates: Sequence[Candidate],
        needs: Needs,
        health: Health,
        now: float,
        rng: random.Random,
    ) -> Plan:
        if candidates and not self.failed:
            self.failed = True
            raise ValueError("only this once")
        return _least_cost(candidates, needs, health, now, rng)


def test_a_failure_that_does_not_recur_is_a_readable_nondeterminism_failure() -> None:
    """A strategy that fails once and then passes on the same inputs is an
    AssertionError saying "deterministic", quoting the first failure (not hypothesis's
    FlakyFailure exception group)."""
    with pytest.raises(AssertionError) as info:
        check_policy(FailsOnce(), max_examples=50)
    message = str(info.value)
    assert message.startswith("check_policy(FailsOnce): deterministic: a failure did not recur")
    assert (
        "the first failure:\ncheck_policy(FailsOnce): total: raised ValueError: only this once"
        in message
    )


def test_candidates_drawn_for_policy_inputs_are_numbered_as_the_router_numbers_them() -> None:
    """A user's candidate strategy that leaves ``index`` at its default 0 does not get a
    correct built-in strategy refuted ("planned 'b:m' with index 0, which is not that
    candidate's"): policy_inputs numbers the candidates by position, as the router does."""
    naive = st.lists(
        st.builds(Candidate, provider=st.sampled_from(["a", "b", "c"]), model=st.just("m")),
        unique_by=lambda c: c.target,
    )
    report = check_policy(
        BuiltinStrategy("fallback"), inputs=policy_inputs(candidates=naive), max_examples=30
    )
    assert report.examples >= 30


def test_inputs_numbered_unlike_the_router_are_a_clear_error_not_the_strategys_failure() -> None:
    """``inputs=`` that draws PolicyInputs whose candidates are not numbered by position
    is a ValueError about the inputs, not a failed property of the strategy."""
    twice_zero = st.just(
        PolicyInputs(
            candidates=(Candidate(provider="a", model="m"), Candidate(provider="b", model="m")),
            needs=Needs(),
            health={},
            now=0.0,
            seed=0,
        )
    )
    with pytest.raises(ValueError, match=r"drew candidate \[1\] b:m with index 0"):
        check_policy(BuiltinStrategy("fallback"), inputs=twice_zero, max_examples=5)


async def async_strategy(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Wrong shape: a strategy is a plain function."""
    return Plan(targets=tuple(candidates))


def test_check_policy_takes_what_a_route_takes_and_refuses_the_wrong_shape() -> None:
    """check_policy takes a built-in name and an import path as a route does (not
    "'str' object is not callable" in every example), and refuses an async function or
    an unresolvable path at once with the route's reason, not a property failure."""
    assert check_policy("least-cost", max_examples=10).strategy == "least-cost"
    report = check_policy("tests.test_review15_kit:copies_its_candidates_fixed", max_examples=10)
    assert report.strategy == "tests.test_review15_kit:copies_its_candidates_fixed"
    with pytest.raises(ValueError, match="is async; a strategy is a plain function"):
        check_policy(async_strategy)
    with pytest.raises(ValueError, match="no module named 'nosuchmodule_xyz'"):
        check_policy("nosuchmodule_xyz:f")


def copies_its_candidates_fixed(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """The fix of copies_its_candidates: ``list(candidates)`` takes any sequence."""
    return _least_cost(list(candidates), needs, health, now, rng)
