"""The policy-testing kit: ``router.testing.check_policy`` and the hypothesis strategies
for a policy's inputs.  Every built-in strategy passes the suite; each kind of broken
strategy fails it with a readable, shrunk counterexample; the input strategies reach
the cases the properties are about; importing ``router.testing`` does not import
hypothesis.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings

from router.policy import (
    BuiltinStrategy,
    Candidate,
    Exclusion,
    Needs,
    Plan,
    TargetHealth,
    estimated_cost,
    over_budget,
    plan_route,
    unfit,
)
from router.testing import (
    PolicyCheck,
    PolicyInputs,
    check_policy,
    policy_candidates,
    policy_health,
    policy_inputs,
    policy_needs,
)

Health = Mapping[str, TargetHealth]


@pytest.mark.parametrize(
    "name", ["fallback", "weighted", "least-latency", "least-cost", "least-busy"]
)
@pytest.mark.parametrize("panic_threshold", [0.5, 0.0])
def test_every_builtin_strategy_passes(name: str, panic_threshold: float) -> None:
    """Each built-in strategy (with panic and without) passes every property, and the
    check reports how many examples it ran and how long the calls took."""
    report = check_policy(BuiltinStrategy(name, panic_threshold), max_examples=60)  # type: ignore[arg-type]
    assert isinstance(report, PolicyCheck)
    assert report.examples >= 60
    assert 0 < report.mean <= report.slowest <= report.time_budget
    assert "examples passed" in str(report)


# --------------------------------------------------------------- broken strategies


def _keep_fit(
    candidates: Sequence[Candidate], needs: Needs, health: Health
) -> tuple[list[Candidate], list[Exclusion]]:
    """What a correct strategy starts from: the fit, in-budget candidates, the rest excluded."""
    usable: list[Candidate] = []
    excluded: list[Exclusion] = []
    for c in candidates:
        why = unfit(c, needs) or over_budget(c, needs, health)
        if why is None:
            usable.append(c)
        else:
            excluded.append(Exclusion(c.target, why))
    return usable, excluded


def plans_everything(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Broken: plans every candidate within its provider's budget, the incapable ones
    too."""
    planned = [c for c in candidates if over_budget(c, needs, health) is None]
    out = [Exclusion(c.target, "over budget") for c in candidates if c not in planned]
    return Plan(targets=tuple(planned), excluded=tuple(out))


def forgets_the_last(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Broken: drops the last usable candidate without excluding it."""
    usable, excluded = _keep_fit(candidates, needs, health)
    return Plan(targets=tuple(usable[:-1]), excluded=tuple(excluded))


def shuffles_with_global_random(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Broken: shuffles with the global ``random``, not the seeded ``rng``."""
    usable, excluded = _keep_fit(candidates, needs, health)
    random.shuffle(usable)
    return Plan(targets=tuple(usable), excluded=tuple(excluded))


def raises_on_empty_health(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Broken: assumes there is always a health snapshot."""
    fastest = min(health.values(), key=lambda h: h.latency or 0.0)
    del fastest
    usable, excluded = _keep_fit(candidates, needs, health)
    return Plan(targets=tuple(usable), excluded=tuple(excluded))


def forgets_health_it_read(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Broken: plans correctly, then empties the router's own health mapping."""
    usable, excluded = _keep_fit(candidates, needs, health)
    health.clear()  # type: ignore[attr-defined]
    return Plan(targets=tuple(usable), excluded=tuple(excluded))


def slow(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Broken: correct, but takes 20 ms a call."""
    time.sleep(0.02)
    usable, excluded = _keep_fit(candidates, needs, health)
    return Plan(targets=tuple(usable), excluded=tuple(excluded))


def cheapest_first(
    candidates: Sequence[Candidate], needs: Needs, health: Health, now: float, rng: random.Random
) -> Plan:
    """Tempting: the capable ones, cheapest first; forgets the spend cap."""
    fit = [c for c in candidates if unfit(c, needs) is None]
    out = [Exclusion(c.target, unfit(c, needs) or "") for c in candidates if c not in fit]
    fit.sort(key=lambda c: estimated_cost(c, needs) or 0.0)
    return Plan(targets=tuple(fit), excluded=tuple(out))


def _failure(strategy: object, max_examples: int = 100) -> str:
    with pytest.raises(AssertionError) as info:
        check_policy(strategy, max_examples=max_examples)  # type: ignore[arg-type]
    return str(info.value)


def test_a_strategy_that_plans_an_incapable_target_fails() -> None:
    """Planning an unfit target fails "never an unfit target", naming the target and
    why it is unfit (a capability or its window), with the candidates and the plan."""
    message = _failure(plans_everything)
    assert message.startswith("check_policy(plans_everything): never an unfit target: planned ")
    assert "candidates:\n  [0] " in message
    assert ", which cannot take " in message or "its context window is" in message
    assert "plan: targets [" in message


def test_a_strategy_that_forgets_a_candidate_fails() -> None:
    """A candidate neither planned nor excluded fails "a valid plan", naming it."""
    message = _failure(forgets_the_last)
    assert "check_policy(forgets_the_last): a valid plan: neither planned nor excluded: " in message
    assert "candidates:\n  [0] " in message


def test_a_strategy_using_global_random_fails_as_nondeterministic() -> None:
    """Ordering with the global ``random`` fails "deterministic", showing both plans."""
    message = _failure(shuffles_with_global_random)
    assert "check_policy(shuffles_with_global_random): deterministic: " in message
    assert "second plan: targets [" in message
    assert "\nplan: targets [" in message


def test_a_strategy_that_raises_on_empty_health_fails_as_not_total() -> None:
    """An exception on an empty health snapshot fails "total", with the shrunk inputs:
    no candidates at all, no health."""
    message = _failure(raises_on_empty_health)
    assert "check_policy(raises_on_empty_health): total: raised ValueError: " in message
    assert "candidates:\n  (none)" in message
    assert "health (a provider not listed is healthy):\n  (empty)" in message


def test_a_strategy_that_changes_its_inputs_fails() -> None:
    """Clearing the health mapping it was given fails "leaves its inputs alone" (the
    candidates are a tuple, as the router passes them: they cannot be changed)."""
    message = _failure(forgets_health_it_read)
    assert "check_policy(forgets_health_it_read): leaves its inputs alone: " in message


def test_a_slow_strategy_fails_over_its_time_budget() -> None:
    """A 20 ms strategy fails "fast" against a 5 ms budget (best of three timings)."""
    with pytest.raises(AssertionError) as info:
        check_policy(slow, max_examples=3, time_budget=0.005)
    assert "check_policy(slow): fast: a call took " in str(info.value)
    assert "over the 5 ms budget" in str(info.value)


def test_the_tempting_cheapest_first_is_refuted_for_crossing_the_cap() -> None:
    """The docs' worked example: "cheapest first" plans a target whose estimated cost
    crosses its provider's spend cap; the shrunk example shows the cap and the cost,
    exactly as the page shows it."""
    message = _failure(cheapest_first)
    assert "never over its provider's budget: planned " in message
    assert "budget_left=$0" in message

    # docs/policy-testing.md pastes the output of its section-5 block, run on its own
    # (a fresh interpreter, as test_docs runs it): that is still what it prints.
    page = (Path(__file__).resolve().parent.parent / "docs" / "policy-testing.md").read_text()
    worked = page[page.index("## 5. A worked example") :]
    code = worked[worked.index("```python\n") + 10 : worked.index("\n```\n")]
    pasted = worked[worked.index("```text\n") + 8 : worked.index("\n```\n\nRead it")]
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == pasted, "re-paste the output into docs/policy-testing.md"


# ------------------------------------------------------------- the input strategies


CASES = {
    "no candidates": lambda x: not x.candidates,
    "an open breaker": lambda x: any("open until" in (h.reason or "") for h in x.health.values()),
    "a half-open breaker with probe slots": lambda x: any(
        h.status == "healthy" and "half-open" in (h.reason or "") for h in x.health.values()
    ),
    "a half-open breaker, every slot taken": lambda x: any(
        h.status == "unhealthy" and "half-open" in (h.reason or "") for h in x.health.values()
    ),
    "a crashed actor": lambda x: any("crashed" in (h.reason or "") for h in x.health.values()),
    "a degraded provider": lambda x: any(h.status == "degraded" for h in x.health.values()),
    "unknown latency": lambda x: any(h.latency is None for h in x.health.values()),
    "a capable target over its cap": lambda x: any(
        unfit(c, x.needs) is None and over_budget(c, x.needs, x.health) for c in x.candidates
    ),
    "a window too small": lambda x: any(
        "context window" in (unfit(c, x.needs) or "") for c in x.candidates
    ),
    "a missing capability": lambda x: any(
        "cannot take" in (unfit(c, x.needs) or "") for c in x.candidates
    ),
    "two models of one provider": lambda x: (
        len({c.provider for c in x.candidates}) < len(x.candidates)
    ),
    "unknown prices": lambda x: any(c.input_price is None for c in x.candidates),
    "three or more capable targets": lambda x: (
        sum(unfit(c, x.needs) is None for c in x.candidates) >= 3
    ),
}


def test_policy_inputs_reach_every_case_the_properties_are_about() -> None:
    """In a few hundred examples the bundle strategy generates each situation a policy
    must handle (else a property about it would pass vacuously)."""
    seen: set[str] = set()

    @settings(max_examples=400, database=None, derandomize=True)
    @given(policy_inputs())
    def run(inputs: PolicyInputs) -> None:
        seen.update(what for what, holds in CASES.items() if holds(inputs))

    run()
    assert sorted(set(CASES) - seen) == []


@settings(max_examples=100, database=None)
@given(policy_inputs())
def test_policy_inputs_are_consistent(inputs: PolicyInputs) -> None:
    """Invariant: candidates are distinct targets indexed by position; the health
    snapshot names only the candidates' providers; an unhealthy provider's reason is
    an open breaker, a half-open one with every slot taken, a crashed actor, or none;
    ``plan`` calls a strategy with a ``random.Random`` of the seed."""
    targets = [c.target for c in inputs.candidates]
    assert len(set(targets)) == len(targets)
    assert [c.index for c in inputs.candidates] == list(range(len(targets)))
    assert set(inputs.health) <= {c.provider for c in inputs.candidates}
    for h in inputs.health.values():
        if h.status == "unhealthy" and h.reason is not None:
            assert h.reason.startswith(("circuit open until", "circuit half-open", "actor crashed"))
    assert inputs.plan(BuiltinStrategy("weighted")) == inputs.plan(BuiltinStrategy("weighted"))
    assert inputs.plan(BuiltinStrategy("least-cost")) == plan_route(
        list(inputs.candidates),
        "least-cost",
        inputs.needs,
        inputs.health,
        inputs.now,
        random.Random(inputs.seed),
    )


@settings(max_examples=50, database=None)
@given(policy_candidates(min_size=2, max_size=3), policy_needs(), policy_health(["a", "b"]))
def test_the_parts_take_their_arguments(
    candidates: list[Candidate], needs: Needs, health: dict[str, TargetHealth]
) -> None:
    """Invariant: ``policy_candidates`` keeps to its sizes and ``policy_health`` to the
    providers it is given; ``policy_needs`` gives non-negative token counts."""
    assert 2 <= len(candidates) <= 3
    assert set(health) <= {"a", "b"}
    assert needs.input_tokens >= 0
    assert needs.output_tokens >= 0


def test_check_policy_takes_a_narrower_input_strategy() -> None:
    """``inputs=`` narrows what the suite draws: with candidates that can take anything
    and have no prices (so no cap can be crossed), the otherwise refuted "plans
    everything" passes."""
    bare = policy_candidates(max_size=3).map(
        lambda cs: [Candidate(provider=c.provider, model=c.model, index=c.index) for c in cs]
    )
    report = check_policy(plans_everything, max_examples=30, inputs=policy_inputs(candidates=bare))
    assert report.examples >= 30


def test_importing_router_testing_does_not_import_hypothesis() -> None:
    """hypothesis is a test dependency: ``import router.testing`` leaves it unloaded."""
    code = "import sys, router.testing; print('hypothesis' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_the_docs_show_the_policy_file_the_examples_import() -> None:
    """docs/policy-testing.md's first python block is examples/mypolicies.py, verbatim:
    the file the page's other examples (and its TOML) name is the one it shows."""
    from tests.test_docs import parse_markdown

    root = Path(__file__).resolve().parent.parent
    blocks, _ = parse_markdown(root / "docs" / "policy-testing.md")
    assert blocks[0].code == (root / "examples" / "mypolicies.py").read_text(encoding="utf-8")
