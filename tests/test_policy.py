"""The pure routing policy, driven by hypothesis: filters, orders, hedge delays, budgets, cost.

``plan_route(candidates, strategy, needs, health, now, rng)`` reads nothing but its
arguments, so every property below builds those arguments, calls it, and checks the plan.
Candidates have distinct provider names, so a target string names one candidate.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from providers import Capabilities, NoRoute, Usage
from router._config import HedgeConfig
from router._policy import (
    Candidate,
    HedgeBudget,
    Needs,
    Plan,
    TargetHealth,
    cost_of,
    estimated_cost,
    hedge_delay,
    plan_route,
)
from router._policy import StrategyName as Strategy

STRATEGIES: list[Strategy] = ["fallback", "weighted", "least-latency", "least-cost", "least-busy"]
RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}
CAPABILITY_NEEDS = ("tools", "vision", "structured_output", "streaming", "embeddings")

# --------------------------------------------------------------------------- strategies

prices = st.none() | st.sampled_from([0.0, 0.1, 0.15, 0.5, 1.0, 2.5, 3.0, 10.0, 15.0, 60.0])
latencies = st.none() | st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.0, 5.0])


@st.composite
def candidate_lists(draw: st.DrawFn, min_size: int = 1, max_size: int = 6) -> list[Candidate]:
    """A route's candidates, in route order, with distinct providers."""
    n = draw(st.integers(min_size, max_size))
    out = []
    for i in range(n):
        caps = Capabilities(**{name: draw(st.booleans()) for name in CAPABILITY_NEEDS})
        out.append(
            Candidate(
                provider=f"p{i}",
                model=draw(st.sampled_from(["m", "gpt-x", "claude-y"])),
                index=i,
                weight=draw(st.sampled_from([0.1, 0.5, 1.0, 2.0, 3.0, 10.0])),
                capabilities=caps,
                context_window=draw(st.none() | st.sampled_from([100, 1000, 4096, 8192, 128000])),
                input_price=draw(prices),
                output_price=draw(prices),
                cached_input_price=draw(prices),
            )
        )
    return out


needs_strategy = st.builds(
    Needs,
    tools=st.booleans(),
    vision=st.booleans(),
    structured_output=st.booleans(),
    streaming=st.booleans(),
    embeddings=st.booleans(),
    input_tokens=st.integers(0, 10_000),
    output_tokens=st.integers(0, 10_000),
)

# Few needs and small requests: most candidates pass the filters, so ordering is exercised.
light_needs = st.builds(
    Needs,
    tools=st.booleans(),
    input_tokens=st.integers(0, 50),
    output_tokens=st.integers(0, 50),
)

target_health = st.builds(
    TargetHealth,
    status=st.sampled_from(["healthy", "degraded", "unhealthy"]),
    reason=st.none() | st.sampled_from(["circuit open until t=12.000", "error rate 50%"]),
    latency=latencies,
    load=st.integers(0, 20),
)


@st.composite
def situations(
    draw: st.DrawFn, needs: st.SearchStrategy[Needs] = needs_strategy
) -> tuple[list[Candidate], Strategy, Needs, dict[str, TargetHealth], int]:
    """Everything plan_route takes (the rng as a seed)."""
    candidates = draw(candidate_lists())
    health = {}
    for c in candidates:
        if draw(st.booleans()):
            health[c.provider] = draw(target_health)
    return (
        candidates,
        draw(st.sampled_from(STRATEGIES)),
        draw(needs),
        health,
        draw(st.integers(0, 2**32)),
    )


def plan_of(
    situation: tuple[list[Candidate], Strategy, Needs, dict[str, TargetHealth], int],
) -> Plan:
    candidates, strategy, needs, health, seed = situation
    return plan_route(candidates, strategy, needs, health, 123.0, random.Random(seed))


def status(health: dict[str, TargetHealth], c: Candidate) -> str:
    return health.get(c.provider, TargetHealth()).status


def capable(c: Candidate, needs: Needs) -> bool:
    """Whether ``c`` can take what ``needs`` asks for, and its window (if known) fits."""
    if any(getattr(needs, n) and not getattr(c.capabilities, n) for n in CAPABILITY_NEEDS):
        return False
    size = needs.input_tokens + needs.output_tokens
    return c.context_window is None or size <= c.context_window


def groups(plan: Plan, health: dict[str, TargetHealth]) -> list[list[Candidate]]:
    """The plan's targets split into runs of equal health status."""
    out: list[list[Candidate]] = []
    last = None
    for c in plan.targets:
        s = status(health, c)
        if s != last:
            out.append([])
            last = s
        out[-1].append(c)
    return out


# --------------------------------------------------------------------------- filters


@given(situations())
def test_never_a_target_lacking_a_needed_capability(situation: Any) -> None:
    """Invariant: every planned target has every capability the request needs."""
    _, _, needs, _, _ = situation
    for c in plan_of(situation).targets:
        for name in CAPABILITY_NEEDS:
            assert not getattr(needs, name) or getattr(c.capabilities, name), (c, name)


@given(situations())
def test_context_filter_never_passes_a_window_too_small(situation: Any) -> None:
    """Invariant: no planned target has a known window smaller than input + output tokens."""
    _, _, needs, _, _ = situation
    size = needs.input_tokens + needs.output_tokens
    for c in plan_of(situation).targets:
        assert c.context_window is None or c.context_window >= size


@given(situations())
def test_capable_targets_are_all_planned_and_incapable_all_excluded(situation: Any) -> None:
    """Invariant: the capability and window filters drop exactly the incapable candidates."""
    candidates, _, needs, health, _ = situation
    plan = plan_of(situation)
    planned = {c.target for c in plan.targets}
    excluded = {e.target: e.reason for e in plan.excluded}
    for c in candidates:
        if not capable(c, needs):
            assert c.target in excluded
            assert excluded[c.target].startswith(("cannot take", "needs ~"))
        elif status(health, c) != "unhealthy":
            assert c.target in planned


@given(situations(light_needs))
def test_without_panic_unhealthy_only_as_a_last_resort_and_degraded_after_healthy(
    situation: Any,
) -> None:
    """Invariant (panic_threshold 0): targets go healthy, then degraded, then unhealthy;
    unhealthy ones appear only when no capable healthy or degraded target exists, else
    they are excluded with their health reason; nothing is marked panic."""
    candidates, strategy, needs, health, seed = situation
    plan = plan_route(
        candidates, strategy, needs, health, 123.0, random.Random(seed), panic_threshold=0.0
    )
    ranks = [RANK[status(health, c)] for c in plan.targets]
    assert ranks == sorted(ranks)
    assert not plan.panic
    assert not any(c.panic for c in plan.targets)
    usable = [c for c in candidates if capable(c, needs) and status(health, c) != "unhealthy"]
    excluded = {e.target: e.reason for e in plan.excluded}
    if usable:
        assert all(status(health, c) != "unhealthy" for c in plan.targets)
        for c in candidates:
            if capable(c, needs) and status(health, c) == "unhealthy":
                assert excluded[c.target] == (health[c.provider].reason or "unhealthy")
    else:
        expected = [c for c in candidates if capable(c, needs)]
        assert sorted(c.index for c in plan.targets) == [c.index for c in expected]


@given(situations(light_needs), st.sampled_from([0.0, 0.1, 0.25, 0.5, 2 / 3, 0.75, 1.0]))
def test_panic_routing_follows_the_threshold(situation: Any, threshold: float) -> None:
    """Invariant (Envoy's panic threshold): with u capable unhealthy targets and r capable
    routable ones out of n, the plan is in panic iff u > 0 and r < threshold·n; in panic
    it is the routable targets (healthy, then degraded) followed by every unhealthy one,
    and exactly those unhealthy ones are marked panic; out of panic none is marked."""
    candidates, strategy, needs, health, seed = situation
    plan = plan_route(
        candidates, strategy, needs, health, 123.0, random.Random(seed), panic_threshold=threshold
    )
    fit = [c for c in candidates if capable(c, needs)]
    unhealthy = [c for c in fit if status(health, c) == "unhealthy"]
    routable = len(fit) - len(unhealthy)
    assert plan.panic == (bool(unhealthy) and routable < threshold * len(fit))
    ranks = [RANK[status(health, c)] for c in plan.targets]
    assert ranks == sorted(ranks)
    marked = {c.target for c in plan.targets if c.panic}
    if plan.panic:
        assert len(plan.targets) == len(fit)
        assert marked == {c.target for c in unhealthy}
    else:
        assert not marked


@pytest.mark.parametrize(
    ("statuses", "threshold", "panic", "planned"),
    [
        # Two targets, one open: 1 of 2 routable is not below 50%: the open one is out.
        (["unhealthy", "healthy"], 0.5, False, ["p1"]),
        # Both open: panic, both tried in the route's order.
        (["unhealthy", "unhealthy"], 0.5, True, ["p0", "p1"]),
        # Three targets, two open: 1 of 3 < 50%: panic, the healthy one first.
        (["unhealthy", "unhealthy", "healthy"], 0.5, True, ["p2", "p0", "p1"]),
        # A lone open target: panic at any threshold above 0.
        (["unhealthy"], 0.01, True, ["p0"]),
        # Threshold 0: never panic; with nothing routable the open ones stay, unmarked.
        (["unhealthy", "unhealthy"], 0.0, False, ["p0", "p1"]),
        # Threshold 1: any unhealthy target means panic.
        (["healthy", "unhealthy", "degraded"], 1.0, True, ["p0", "p2", "p1"]),
    ],
)
def test_panic_routing_examples(
    statuses: list[str], threshold: float, panic: bool, planned: list[str]
) -> None:
    """Scenario table: which plans are in panic, and in what order they try targets."""
    candidates = [Candidate(provider=f"p{i}", model="m", index=i) for i in range(len(statuses))]
    health = {
        f"p{i}": TargetHealth(status=s, reason="circuit open until t=9.000")  # type: ignore[arg-type]
        for i, s in enumerate(statuses)
    }
    plan = plan_route(
        candidates, "fallback", Needs(), health, 0.0, random.Random(0), panic_threshold=threshold
    )
    assert (plan.panic, [c.provider for c in plan.targets]) == (panic, planned)
    for c in plan.targets:
        assert c.panic == (plan.panic and health[c.provider].status == "unhealthy")


@given(situations())
def test_every_candidate_is_planned_or_excluded_exactly_once(situation: Any) -> None:
    """Invariant: targets and excluded partition the candidates: no candidate in both,
    none missing, none twice; every exclusion has a reason."""
    candidates, _, _, _, _ = situation
    plan = plan_of(situation)
    planned = [c.target for c in plan.targets]
    excluded = [e.target for e in plan.excluded]
    assert len(planned) == len(set(planned))
    assert len(excluded) == len(set(excluded))
    assert not set(planned) & set(excluded)
    assert sorted(planned + excluded) == sorted(c.target for c in candidates)
    assert all(e.reason for e in plan.excluded)
    # The planned targets are the candidates themselves, unchanged but for the panic mark.
    assert all(msgspec.structs.replace(c, panic=False) in candidates for c in plan.targets)


@given(situations())
def test_same_seed_same_plan(situation: Any) -> None:
    """Invariant: plan_route is a function of its arguments: the same seed gives the same plan."""
    assert plan_of(situation) == plan_of(situation)


@given(situations(light_needs))
def test_fallback_keeps_the_route_order_within_each_health_group(situation: Any) -> None:
    """Invariant: with "fallback", targets of equal health keep the route's order."""
    candidates, _, needs, health, seed = situation
    plan = plan_of((candidates, "fallback", needs, health, seed))
    for group in groups(plan, health):
        assert [c.index for c in group] == sorted(c.index for c in group)
    # All healthy: the plan is the capable candidates in route order.
    healthy = {c.provider: TargetHealth() for c in candidates}
    plan = plan_of((candidates, "fallback", needs, healthy, seed))
    assert list(plan.targets) == [c for c in candidates if capable(c, needs)]


# --------------------------------------------------------------------------- strategies


@settings(max_examples=12, deadline=None)
@given(
    weights=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 5.0]), min_size=2, max_size=5),
    seed=st.integers(0, 2**32),
)
def test_weighted_first_target_frequency_matches_the_weights(
    weights: list[float], seed: int
) -> None:
    """Invariant: over 20,000 plans target i comes first with frequency ≈ wᵢ/Σw
    (every target within 5 standard errors, and the chi-square statistic below its
    critical value at p = 10⁻⁶)."""
    candidates = [
        Candidate(provider=f"p{i}", model="m", index=i, weight=w) for i, w in enumerate(weights)
    ]
    rng = random.Random(seed)
    n = 20_000
    firsts = Counter(
        plan_route(candidates, "weighted", Needs(), {}, 0.0, rng).targets[0].index for _ in range(n)
    )
    total = sum(weights)
    chi2 = 0.0
    for i, w in enumerate(weights):
        p = w / total
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(firsts[i] / n - p) <= 5 * sigma, (i, firsts[i] / n, p)
        chi2 += (firsts[i] - n * p) ** 2 / (n * p)
    # Chi-square critical values at p = 1e-6, by degrees of freedom (targets - 1).
    critical = {1: 23.93, 2: 27.63, 3: 30.66, 4: 33.38}
    assert chi2 < critical[len(weights) - 1]


@given(situations(light_needs))
def test_weighted_order_is_a_permutation_of_each_health_group(situation: Any) -> None:
    """Invariant: "weighted" reorders within health groups only, never across them."""
    candidates, _, needs, health, seed = situation
    weighted = plan_of((candidates, "weighted", needs, health, seed))
    fallback = plan_of((candidates, "fallback", needs, health, seed))
    assert [status(health, c) for c in weighted.targets] == [
        status(health, c) for c in fallback.targets
    ]
    assert sorted(c.index for c in weighted.targets) == sorted(c.index for c in fallback.targets)


@given(situations(light_needs))
def test_least_cost_puts_the_cheapest_first(situation: Any) -> None:
    """Invariant: with "least-cost", each health group is ordered by estimated_cost (unknown
    prices last, ties in route order), so the first target is the cheapest capable one of
    the best health available."""
    candidates, _, needs, health, seed = situation
    plan = plan_of((candidates, "least-cost", needs, health, seed))
    assume(plan.targets)

    def key(c: Candidate) -> tuple[float, int]:
        cost = estimated_cost(c, needs)
        return (math.inf if cost is None else cost, c.index)

    for group in groups(plan, health):
        assert [key(c) for c in group] == sorted(key(c) for c in group)
    best = min(RANK[status(health, c)] for c in plan.targets)
    pool = [c for c in plan.targets if RANK[status(health, c)] == best]
    assert plan.targets[0] == min(pool, key=key)


def test_least_cost_example() -> None:
    """A cheap target goes first, an expensive one second, an unpriced one last."""
    dear = Candidate(provider="dear", model="m", index=0, input_price=10.0, output_price=30.0)
    unknown = Candidate(provider="unknown", model="m", index=1)
    cheap = Candidate(provider="cheap", model="m", index=2, input_price=0.15, output_price=0.6)
    needs = Needs(input_tokens=1000, output_tokens=100)
    plan = plan_route([dear, unknown, cheap], "least-cost", needs, {}, 0.0, random.Random(0))
    assert [c.provider for c in plan.targets] == ["cheap", "dear", "unknown"]
    assert estimated_cost(cheap, needs) == pytest.approx((1000 * 0.15 + 100 * 0.6) / 1e6)


@given(situations(light_needs))
def test_least_busy_orders_by_load(situation: Any) -> None:
    """Invariant: with "least-busy", loads never decrease within a health group, and equal
    loads keep the route's order."""
    candidates, _, needs, health, seed = situation
    plan = plan_of((candidates, "least-busy", needs, health, seed))
    for group in groups(plan, health):
        keys = [(health.get(c.provider, TargetHealth()).load, c.index) for c in group]
        assert keys == sorted(keys)


@given(situations(light_needs))
def test_least_latency_first_is_never_the_single_slowest(situation: Any) -> None:
    """Invariant (power of two choices): the first target is the faster of two drawn from
    its health group, so when the group has ≥ 2 targets and one latency is strictly the
    largest, that target is not first; the others follow by latency (ties in route
    order); a target with no estimate counts as fastest."""
    candidates, _, needs, health, seed = situation
    plan = plan_of((candidates, "least-latency", needs, health, seed))

    def latency(c: Candidate) -> float:
        value = health.get(c.provider, TargetHealth()).latency
        return 0.0 if value is None else value

    for group in groups(plan, health):
        if len(group) < 2:
            continue
        values = [latency(c) for c in group]
        slowest = max(values)
        if values.count(slowest) == 1:
            assert latency(group[0]) < slowest
        rest = [(latency(c), c.index) for c in group[1:]]
        assert rest == sorted(rest)


@given(seed=st.integers(0, 2**32))
def test_least_latency_two_targets_the_faster_always_first(seed: int) -> None:
    """With two targets P2C samples both, so the faster (or unmeasured) one is always first."""
    slow = Candidate(provider="slow", model="m", index=0)
    fast = Candidate(provider="fast", model="m", index=1)
    new = Candidate(provider="new", model="m", index=2)
    health = {"slow": TargetHealth(latency=2.0), "fast": TargetHealth(latency=0.5)}
    rng = random.Random(seed)
    plan = plan_route([slow, fast], "least-latency", Needs(), health, 0.0, rng)
    assert [c.provider for c in plan.targets] == ["fast", "slow"]
    plan = plan_route([fast, new], "least-latency", Needs(), health, 0.0, rng)
    assert [c.provider for c in plan.targets] == ["new", "fast"]


@settings(max_examples=50)
@given(seed=st.integers(0, 2**32))
def test_least_latency_spreads_the_first_pick(seed: int) -> None:
    """P2C explores: over many plans of three targets both the fastest and the middle one
    come first (the middle one when the pair drawn is middle + slowest), never the slowest."""
    cs = [Candidate(provider=f"p{i}", model="m", index=i) for i in range(3)]
    health = {"p0": TargetHealth(latency=3.0), "p1": TargetHealth(latency=1.0)}
    health["p2"] = TargetHealth(latency=2.0)
    rng = random.Random(seed)
    firsts = Counter(
        plan_route(cs, "least-latency", Needs(), health, 0.0, rng).targets[0].provider
        for _ in range(300)
    )
    assert set(firsts) == {"p1", "p2"}
    # p2 is first only when the pair drawn is {p0, p2}: one pair in three.
    assert 0.2 < firsts["p2"] / 300 < 0.47


# --------------------------------------------------------------------------- empty plans


@given(situations())
def test_an_empty_plan_raises_no_route_naming_every_reason(situation: Any) -> None:
    """Invariant: a plan is empty only when no candidate is capable, and then raise_if_empty
    raises NoRoute naming the model and every excluded target with its reason."""
    candidates, _, needs, _, _ = situation
    plan = plan_of(situation)
    if plan.targets:
        plan.raise_if_empty("fast")  # does not raise
        return
    assert not any(capable(c, needs) for c in candidates)
    with pytest.raises(NoRoute) as info:
        plan.raise_if_empty("fast")
    message = str(info.value)
    assert "'fast'" in message
    for e in plan.excluded:
        assert f"{e.target}: {e.reason}" in message


def test_no_route_message_example() -> None:
    """A request with images on text-only targets names each target and why."""
    text_only = Capabilities(vision=False)
    cs = [
        Candidate(provider="a", model="m1", capabilities=text_only),
        Candidate(provider="b", model="m2", index=1, context_window=100),
    ]
    plan = plan_route(
        cs,
        "fallback",
        Needs(vision=True, input_tokens=90, output_tokens=20),
        {},
        0.0,
        random.Random(0),
    )
    with pytest.raises(NoRoute, match=r"a:m1: cannot take images; b:m2: needs ~110 tokens"):
        plan.raise_if_empty("vision-route")


# --------------------------------------------------------------------------- hedge delay

seconds = st.sampled_from([0.0, 0.001, 0.05, 0.25, 0.5, 1.0, 2.0, 7.5, 30.0, 100.0])


@given(delay=seconds, percentile=st.none() | seconds, samples=st.integers(0, 100))
def test_fixed_hedge_delay_ignores_observations(
    delay: float, percentile: float | None, samples: int
) -> None:
    """Invariant: a numeric delay is returned as is, whatever was observed."""
    assert hedge_delay(HedgeConfig(delay=delay), percentile, samples) == delay


@given(percentile=st.none() | seconds, samples=st.integers(0, 100))
def test_no_hedge_delay_is_infinite(percentile: float | None, samples: int) -> None:
    """Invariant: delay=None means no hedging: an infinite delay."""
    assert hedge_delay(HedgeConfig(delay=None), percentile, samples) == math.inf


@given(
    q=st.sampled_from(["p50", "p90", "p95", "p99", "p99.9"]),
    low=seconds,
    span=seconds,
    default=seconds,
    min_samples=st.integers(1, 50),
    percentile=st.none() | seconds,
    samples=st.integers(0, 100),
)
def test_percentile_hedge_delay_is_clamped_and_cold_starts_on_the_default(
    q: str,
    low: float,
    span: float,
    default: float,
    min_samples: int,
    percentile: float | None,
    samples: int,
) -> None:
    """Invariant: a percentile delay is clamp(observed, min, max) once min_samples samples
    back it, and clamp(default_delay, min, max) before (or with no observation)."""
    config = HedgeConfig(
        delay=q,
        min_delay=low,
        max_delay=low + span,
        default_delay=default,
        min_samples=min_samples,
    )
    got = hedge_delay(config, percentile, samples)
    assert low <= got <= low + span
    warm = percentile is not None and samples >= min_samples
    raw = percentile if warm else default
    assert raw is not None
    assert got == min(max(raw, low), low + span)
    if low <= raw <= low + span:
        assert got == raw


def test_percentile_hedge_delay_examples() -> None:
    """The documented examples: warm, cold, clamped from below and from above."""
    p95 = HedgeConfig(delay="p95", min_samples=20, default_delay=1.0, min_delay=0.1, max_delay=5.0)
    assert hedge_delay(p95, 0.8, samples=20) == 0.8
    assert hedge_delay(p95, 0.8, samples=19) == 1.0
    assert hedge_delay(p95, None, samples=50) == 1.0
    assert hedge_delay(p95, 0.01, samples=50) == 0.1
    assert hedge_delay(p95, 60.0, samples=50) == 5.0


# --------------------------------------------------------------------------- hedge budget


@given(
    ratio=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0]),
    burst=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 10.0]),
    events=st.lists(st.booleans(), max_size=200),
)
def test_hedge_budget_caps_hedges_over_any_window(
    ratio: float, burst: float, events: list[bool]
) -> None:
    """Invariant: over any run of n requests (any window of the sequence, not only from
    the start), hedges granted ≤ ratio·n + burst; tokens stay within [0, burst]."""
    budget = HedgeBudget(ratio, burst)
    # Each event is a request (True) or a hedge attempt (False); a request deposits.
    log: list[tuple[bool, bool]] = []  # (is_request, hedge_granted)
    for is_request in events:
        if is_request:
            budget.deposit()
            log.append((True, False))
        else:
            log.append((False, budget.try_spend()))
        assert 0.0 <= budget.tokens <= burst
    prefix_requests = [0]
    prefix_hedges = [0]
    for is_request, granted in log:
        prefix_requests.append(prefix_requests[-1] + is_request)
        prefix_hedges.append(prefix_hedges[-1] + granted)
    for i in range(len(log) + 1):
        for j in range(i, len(log) + 1):
            n = prefix_requests[j] - prefix_requests[i]
            hedges = prefix_hedges[j] - prefix_hedges[i]
            assert hedges <= ratio * n + burst + 1e-6, (i, j, n, hedges)


@given(burst=st.integers(0, 20), attempts=st.integers(0, 40))
def test_hedge_budget_without_refill_grants_exactly_the_burst(burst: int, attempts: int) -> None:
    """Invariant: with ratio 0 nothing is earned: only the cold start's min(burst, 1)
    token is ever spent."""
    budget = HedgeBudget(0.0, float(burst))
    granted = 0
    for _ in range(attempts):
        budget.deposit()
        granted += budget.try_spend()
    assert granted == min(attempts, burst, 1)


@given(ratio=st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0]), n=st.integers(1, 400))
def test_hedge_budget_refills_at_the_ratio(ratio: float, n: int) -> None:
    """Invariant: once its first token is spent, each request wanting a hedge gets one
    every 1/ratio requests: over n requests, ratio·n - 1 ≤ hedges ≤ ratio·n + 1."""
    budget = HedgeBudget(ratio, 1.0)
    assert budget.try_spend()  # the cold start's one token
    granted = 0
    for _ in range(n):
        budget.deposit()
        granted += budget.try_spend()
    assert math.floor(ratio * n) - 1 <= granted <= ratio * n + 1


ratios = st.integers(0, 2_000_000).map(lambda k: k / 1_000_000)


@given(
    ratio=ratios,
    burst=st.integers(0, 20_000_000).map(lambda k: k / 1_000_000),
    start=st.integers(1, 9),
    wants=st.lists(st.integers(0, 9), max_size=300),
)
def test_hedge_budget_prefix_bound_from_a_cold_start(
    ratio: float, burst: float, start: int, wants: list[int]
) -> None:
    """Invariant: from a new budget, over the first n requests (each deposits, then asks
    for up to max_attempts - 1 hedges) hedges ≤ ratio·n + min(burst, start), exactly: a
    cold router does not hedge its first requests out of a full bucket."""
    budget = HedgeBudget(ratio, burst, start=start)
    granted = 0
    for n, want in enumerate(wants, start=1):
        budget.deposit()
        for _ in range(want):
            granted += budget.try_spend()
        assert granted <= math.floor(ratio * n + min(burst, start) + 1e-9), (n, granted)
        assert 0.0 <= budget.tokens <= burst


def test_cold_budget_hedges_one_in_ten_from_the_start() -> None:
    """The reported case (ratio 0.1, burst 10): of the first 30 requests all wanting a
    hedge, requests 1, 10, 20 and 30 get one, not the first ten all."""
    budget = HedgeBudget(0.1, 10.0)
    granted = []
    for i in range(1, 31):
        budget.deposit()
        if budget.try_spend():
            granted.append(i)
    assert granted == [1, 10, 20, 30]


@given(ratio=ratios, calm=st.integers(0, 500))
def test_hedge_budget_saves_up_to_the_burst(ratio: float, calm: int) -> None:
    """Invariant: after ``calm`` requests with no hedge, floor(min(burst, 1 + ratio·calm))
    hedges can go at once: the burst is earned, never granted up front."""
    budget = HedgeBudget(ratio, 10.0)
    for _ in range(calm):
        budget.deposit()
    granted = 0
    while budget.try_spend():
        granted += 1
    assert granted == math.floor(min(10.0, 1.0 + round(ratio * 1e6) * calm / 1e6) + 1e-12)


# --------------------------------------------------------------------------- cost

tokens = st.integers(0, 2_000_000)
price = st.sampled_from([0.0, 0.075, 0.15, 0.5, 1.25, 2.5, 3.0, 10.0, 15.0, 75.0])


@given(
    input_price=price,
    output_price=price,
    cached_price=st.none() | price,
    input_tokens=tokens,
    output_tokens=tokens,
    cached=tokens,
)
def test_cost_of_is_the_formula(
    input_price: float,
    output_price: float,
    cached_price: float | None,
    input_tokens: int,
    output_tokens: int,
    cached: int,
) -> None:
    """Invariant: cost = ((in - cached)·p_in + cached·p_cached + out·p_out) / 1e6, with
    cached tokens capped at the input and priced at p_in when no cached price is set."""
    c = Candidate(
        provider="p",
        model="m",
        input_price=input_price,
        output_price=output_price,
        cached_input_price=cached_price,
    )
    usage = Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached
    )
    hit = min(cached, input_tokens)
    p_cached = input_price if cached_price is None else cached_price
    expected = (
        (input_tokens - hit) * input_price + hit * p_cached + output_tokens * output_price
    ) / 1e6
    got = cost_of(c, usage)
    assert got is not None
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert got >= 0


@given(
    input_price=price,
    output_price=price,
    cached_price=st.none() | price,
    base=st.tuples(tokens, tokens, tokens),
    more=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)),
)
def test_cost_of_is_monotone_in_tokens(
    input_price: float,
    output_price: float,
    cached_price: float | None,
    base: tuple[int, int, int],
    more: tuple[int, int],
) -> None:
    """Invariant: more input (uncached) or more output tokens never cost less."""
    c = Candidate(
        provider="p",
        model="m",
        input_price=input_price,
        output_price=output_price,
        cached_input_price=cached_price,
    )
    i, o, k = base
    k = min(k, i)
    before = cost_of(c, Usage(input_tokens=i, output_tokens=o, cached_input_tokens=k))
    after = cost_of(
        c, Usage(input_tokens=i + more[0], output_tokens=o + more[1], cached_input_tokens=k)
    )
    assert before is not None
    assert after is not None
    assert after >= before * (1 - 1e-12)


@given(input_tokens=st.integers(1, 100_000), data=st.data())
def test_cached_tokens_are_priced_at_the_cached_price(input_tokens: int, data: Any) -> None:
    """Invariant: moving k prompt tokens into the cache changes the cost by exactly
    k·(p_cached - p_in)/1e6, so a cheaper cache price never costs more."""
    c = Candidate(
        provider="p", model="m", input_price=3.0, output_price=15.0, cached_input_price=0.3
    )
    k = data.draw(st.integers(0, input_tokens))
    full = cost_of(c, Usage(input_tokens=input_tokens, output_tokens=10))
    cached = cost_of(c, Usage(input_tokens=input_tokens, output_tokens=10, cached_input_tokens=k))
    assert full is not None
    assert cached is not None
    assert cached - full == pytest.approx(k * (0.3 - 3.0) / 1e6, rel=1e-9, abs=1e-15)
    assert cached <= full


def test_unknown_prices_have_no_cost() -> None:
    """Without both an input and an output price, neither cost is known."""
    usage = Usage(input_tokens=10, output_tokens=10)
    needs = Needs(input_tokens=10, output_tokens=10)
    for c in (
        Candidate(provider="p", model="m"),
        Candidate(provider="p", model="m", input_price=1.0),
        Candidate(provider="p", model="m", output_price=1.0),
    ):
        assert cost_of(c, usage) is None
        assert estimated_cost(c, needs) is None


@given(
    input_price=price,
    output_price=price,
    input_tokens=st.integers(0, 100_000),
    output_tokens=st.integers(0, 100_000),
)
def test_estimated_cost_equals_cost_of_the_same_usage(
    input_price: float, output_price: float, input_tokens: int, output_tokens: int
) -> None:
    """Invariant: the policy's estimate is what cost_of charges for that usage, uncached."""
    c = Candidate(provider="p", model="m", input_price=input_price, output_price=output_price)
    needs = Needs(input_tokens=input_tokens, output_tokens=output_tokens)
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    assert estimated_cost(c, needs) == pytest.approx(cost_of(c, usage), rel=1e-12, abs=1e-15)
