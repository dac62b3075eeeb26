"""The policy-testing kit: hypothesis strategies for a policy's inputs, and ``check_policy``.

hypothesis is a test dependency, not a runtime one: this module imports it only inside
the functions that build strategies or run the suite, so ``import router.testing`` stays
light (tests/test_dependencies.py).  See docs/policy-testing.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from providers import Capabilities

from ._policy import (
    DEFAULT_PANIC_THRESHOLD,
    Candidate,
    HealthStatus,
    Needs,
    Plan,
    Strategy,
    TargetHealth,
    estimated_cost,
    health_of,
    over_budget,
    unfit,
)
from ._strategies import plan_problem, resolve

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "PolicyCheck",
    "PolicyInputs",
    "check_policy",
    "policy_candidates",
    "policy_health",
    "policy_inputs",
    "policy_needs",
]

#: check_policy's seed when derandomized.
_SEED = 0
_PROVIDERS = ("p0", "p1", "p2", "p3")
_STATUSES: tuple[HealthStatus, ...] = ("healthy", "degraded", "unhealthy")
_WINDOWS = (4_096, 8_192, 32_768, 128_000, 200_000, 1_000_000)
_MODELS = ("m0", "m1", "m2")
# The reasons a provider actor gives the policy (ProviderActor.policy_health): an open
# breaker, a half-open one (healthy while it has probe slots, unhealthy once every slot
# is taken), a crashed actor, an error rate or a slow p95; None: a snapshot of yours.
_REASONS: dict[HealthStatus, tuple[str | None, ...]] = {
    "healthy": (None, "circuit half-open: probing"),
    "degraded": ("error rate 40%", "p95 latency 2.500s", None),
    "unhealthy": (
        "circuit open until t=12.000",
        "circuit half-open: every probe slot is taken",
        "actor crashed: RuntimeError('boom')",
        None,
    ),
}


class PolicyInputs(NamedTuple):
    """One call's worth of a strategy's inputs, as :func:`policy_inputs` draws them.

    ``seed`` seeds the ``random.Random`` the strategy is given; :meth:`plan` calls a
    strategy with them.
    """

    candidates: tuple[Candidate, ...]
    needs: Needs
    health: dict[str, TargetHealth]
    now: float
    seed: int

    def plan(
        self,
        strategy: Strategy,
        candidates: Sequence[Candidate] | None = None,
        health: dict[str, TargetHealth] | None = None,
    ) -> Plan:
        """``strategy(candidates, needs, health, now, random.Random(seed))`` as the
        router calls it: the candidates as a tuple (the route's own) and a copy of the
        health (or ``candidates`` and ``health`` of yours, equal to these, to see what
        the strategy did to them)."""
        return strategy(
            self.candidates if candidates is None else candidates,
            self.needs,
            dict(self.health) if health is None else health,
            self.now,
            random.Random(self.seed),
        )

    def describe(self) -> str:
        """The inputs, one line per candidate and per provider's health."""
        lines = ["candidates:"]
        if not self.candidates:
            lines.append("  (none)")
        for c in self.candidates:
            lines.append(f"  [{c.index}] {_describe_candidate(c)}")
        lines.append(f"needs: {_describe_needs(self.needs)}")
        lines.append("health (a provider not listed is healthy):")
        if not self.health:
            lines.append("  (empty)")
        for provider, h in sorted(self.health.items()):
            lines.append(f"  {provider}: {_describe_health(h)}")
        lines.append(f"now: {self.now!r}  seed: {self.seed!r}")
        return "\n".join(lines)


class PolicyCheck(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`check_policy` measured of a strategy that passed every property.

    ``slowest`` is the slowest call in seconds (each call over ``time_budget`` is timed
    again, the best of three counting, so one scheduler hiccup does not fail a check);
    ``mean`` the mean call time.
    """

    strategy: str
    examples: int
    slowest: float
    mean: float
    time_budget: float

    def __str__(self) -> str:
        return (
            f"{self.strategy}: {self.examples} examples passed; per call "
            f"mean {self.mean * 1e6:.0f} us, slowest {self.slowest * 1e6:.0f} us "
            f"(budget {self.time_budget * 1e3:g} ms)"
        )


# ------------------------------------------------------------------------ describing


def _describe_candidate(c: Candidate) -> str:
    caps = c.capabilities
    lacks = [
        name
        for name in ("tools", "vision", "structured_output", "streaming", "embeddings")
        if not getattr(caps, name)
    ]
    parts = [c.target, f"weight={c.weight:g}"]
    parts.append("window=" + ("none" if c.context_window is None else str(c.context_window)))
    parts.append(f"price in/out={_money(c.input_price)}/{_money(c.output_price)}")
    parts.append("lacks " + ",".join(lacks) if lacks else "can take anything")
    if c.panic:
        parts.append("PANIC")
    return "  ".join(parts)


def _money(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _describe_needs(n: Needs) -> str:
    wants = [
        name
        for name in ("tools", "vision", "structured_output", "streaming", "embeddings")
        if getattr(n, name)
    ]
    return f"{n.input_tokens} in + {n.output_tokens} out tokens, " + (
        "needs " + ",".join(wants) if wants else "no features"
    )


def _describe_health(h: TargetHealth) -> str:
    parts = [h.status + (f" ({h.reason})" if h.reason else "")]
    parts.append("latency=" + ("unknown" if h.latency is None else f"{h.latency:g}s"))
    parts.append(f"load={h.load}")
    parts.append("budget_left=" + ("no cap" if h.budget_left is None else f"${h.budget_left:g}"))
    return "  ".join(parts)


def _describe_plan(plan: object) -> str:
    if not isinstance(plan, Plan):
        return f"plan: {plan!r}"
    targets = ", ".join(c.target + (" (panic)" if c.panic else "") for c in plan.targets)
    lines = [f"plan: targets [{targets}]" + ("  panic" if plan.panic else "")]
    for e in plan.excluded:
        lines.append(f"  excluded {e.target}: {e.reason!r}")
    return "\n".join(lines)


# ----------------------------------------------------------------------- strategies


def policy_candidates(*, min_size: int = 0, max_size: int = 5) -> SearchStrategy[list[Candidate]]:
    """A route's candidates: distinct ``provider:model`` targets over a few providers
    (several models may share one, and with it its health and budget), with weights,
    prices (or none), context windows (or none) and capabilities; ``index`` is each
    one's position."""
    from hypothesis import strategies as st

    price = st.floats(0.0, 100.0)
    prices = price | price | st.none()  # known two times in three
    able = st.sampled_from((True, True, True, False))  # shrinks to "can"
    capabilities = st.builds(
        Capabilities,
        tools=able,
        vision=able,
        structured_output=able,
        streaming=able,
        embeddings=able,
    )
    windows = st.none() | st.sampled_from(_WINDOWS) | st.integers(1, 200_000)

    @st.composite
    def one(draw: st.DrawFn) -> Candidate:
        input_price = draw(prices)
        return Candidate(
            provider=draw(st.sampled_from(_PROVIDERS)),
            model=draw(st.sampled_from(_MODELS)),
            weight=draw(st.floats(0.1, 10.0)),
            capabilities=draw(capabilities),
            context_window=draw(windows),
            input_price=input_price,
            output_price=draw(prices),
            cached_input_price=None if input_price is None else draw(prices),
        )

    def indexed(found: list[Candidate]) -> list[Candidate]:
        return [msgspec.structs.replace(c, index=i) for i, c in enumerate(found)]

    strategy: SearchStrategy[list[Candidate]] = st.lists(
        one(), min_size=min_size, max_size=max_size, unique_by=lambda c: c.target
    ).map(indexed)
    return strategy


def policy_needs() -> SearchStrategy[Needs]:
    """What a request needs: features (tools, vision, structured output, streaming,
    embeddings) and token counts on the scale of real context windows."""
    from hypothesis import strategies as st

    wants = st.sampled_from((False, False, False, True))  # shrinks to "does not need"
    return st.builds(
        Needs,
        tools=wants,
        vision=wants,
        structured_output=wants,
        streaming=wants,
        embeddings=wants,
        input_tokens=st.integers(0, 4_000) | st.integers(0, 300_000),
        output_tokens=st.integers(0, 4_000) | st.integers(0, 100_000),
    )


def policy_health(providers: Sequence[str] = _PROVIDERS) -> SearchStrategy[dict[str, TargetHealth]]:
    """Health snapshots for some of ``providers`` (one left out is healthy), as provider
    actors report them: healthy (perhaps a half-open breaker with probe slots left),
    degraded (an error rate, a slow p95) or unhealthy (an open breaker, a half-open one
    with every probe slot taken, a crashed actor); a latency estimate or none yet, a
    load, dollars left under a spend cap or no cap."""
    from hypothesis import strategies as st

    @st.composite
    def one(draw: st.DrawFn) -> TargetHealth:
        status: HealthStatus = draw(st.sampled_from(_STATUSES))
        reason = draw(st.sampled_from(_REASONS[status]))
        return TargetHealth(
            status=status,
            reason=reason,
            latency=draw(st.none() | st.floats(0.0, 60.0)),
            load=draw(st.integers(0, 100)),
            budget_left=draw(st.none() | st.floats(0.0, 10.0) | st.just(0.0)),
        )

    names = sorted(set(providers))

    @st.composite
    def snapshot(draw: st.DrawFn) -> dict[str, TargetHealth]:
        snapshot: dict[str, TargetHealth] = {}
        for name in names:  # a loop, not a comprehension: hypothesis sees draw() used
            if draw(st.booleans()):
                snapshot[name] = draw(one())
        return snapshot

    strategy: SearchStrategy[dict[str, TargetHealth]] = snapshot()
    return strategy


def policy_inputs(
    *,
    candidates: SearchStrategy[list[Candidate]] | None = None,
    needs: SearchStrategy[Needs] | None = None,
) -> SearchStrategy[PolicyInputs]:
    """A consistent ``(candidates, needs, health, now, seed)``: the health snapshot
    covers (some of) the candidates' providers; ``now`` is trio time, ``seed`` the
    seed of the strategy's ``random.Random``.  ``candidates`` and ``needs`` replace the
    default strategies for those parts (the candidates drawn are numbered by position,
    ``index`` 0, 1, ..., as the router numbers a route's)."""
    from hypothesis import strategies as st

    candidate_lists = policy_candidates() if candidates is None else candidates
    needs_of = policy_needs() if needs is None else needs

    @st.composite
    def draw(draw: st.DrawFn) -> PolicyInputs:
        # Numbered by position, as the router numbers a route's candidates (a strategy
        # of yours may draw them with the default index 0).
        cands = [
            c if c.index == i else msgspec.structs.replace(c, index=i)
            for i, c in enumerate(draw(candidate_lists))
        ]
        health = draw(policy_health(sorted({c.provider for c in cands})))
        return PolicyInputs(
            candidates=tuple(cands),
            needs=draw(needs_of),
            health=health,
            now=draw(st.floats(0.0, 1e6)),
            seed=draw(st.integers(0, 2**32 - 1)),
        )

    strategy: SearchStrategy[PolicyInputs] = draw()
    return strategy


# ---------------------------------------------------------------------- check_policy


def _name(strategy: object) -> str:
    name = getattr(strategy, "__qualname__", None) or getattr(strategy, "__name__", None)
    if name:
        return str(name)
    if type(strategy).__repr__ is object.__repr__:  # an instance: its class, no address
        return type(strategy).__qualname__
    return repr(strategy)


def _first_failure(exc: BaseException) -> str | None:
    """The message of the first check_policy failure inside ``exc`` (hypothesis's
    ``Flaky``: a group of them in newer versions, the cause in older ones)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, AssertionError) and str(e).startswith("check_policy("):
            return str(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None


def check_policy(
    strategy: str | Strategy,
    *,
    max_examples: int = 200,
    time_budget: float = 0.05,
    inputs: SearchStrategy[PolicyInputs] | None = None,
    derandomize: bool = True,
) -> PolicyCheck:
    """Run the property suite every strategy must pass; raise ``AssertionError`` on a failure.

    For each of ``max_examples`` inputs drawn from ``inputs`` (default
    :func:`policy_inputs`), called as the router calls it (the candidates a tuple, the
    health a dict), the strategy:

    - is total: it returns, raising nothing;
    - leaves its inputs alone: the health mapping it is given is unchanged after the
      call (the router's own);
    - returns a valid plan (:func:`~router.policy.plan_problem`): only given
      candidates, none twice, every candidate planned or excluded with a non-empty
      reason;
    - never plans a target :func:`~router.policy.unfit` for the request or
      :func:`~router.policy.over_budget` on its provider;
    - is deterministic: called again at once on equal inputs with a ``random.Random``
      of the same seed, it returns an equal plan (and a failure recurs when hypothesis
      replays its inputs; one that does not is reported as non-determinism);
    - is fast: a call takes at most ``time_budget`` seconds (a call over it is timed
      twice more and the fastest of the three counts).

    On a failure hypothesis shrinks the inputs, and the ``AssertionError`` names the
    property and shows the shrunk candidates, needs, health and the plan.  With
    ``derandomize`` (the default) the same strategy always meets the same examples.
    Returns what it measured (:class:`PolicyCheck`).  Call it from a plain (not trio)
    test; hypothesis must be installed.

    ``strategy`` is what a route's ``strategy`` takes: a function (or an object with
    ``__call__``), a built-in strategy's name or an import path (``"mypkg.mod:func"``).

    Raises:
        AssertionError: a property failed; the message says which, with the inputs.
        ValueError: ``strategy`` names no strategy, or has the wrong shape (as a
            route's ConfigError says: not callable, a class, async, not taking five
            arguments).
    """
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Flaky

    # Resolved as a route resolves it: a built-in name or an import path names one,
    # and one of the wrong shape (not callable, async, not taking five arguments) is
    # refused here, as in a config, rather than failing every example.
    label = strategy if isinstance(strategy, str) else _name(strategy)
    try:
        strategy = resolve(strategy, DEFAULT_PANIC_THRESHOLD)
    except ValueError as exc:
        raise ValueError(f"check_policy: {exc}") from None
    drawn = policy_inputs() if inputs is None else inputs
    times: list[float] = []

    def fail(prop: str, why: str, example: PolicyInputs, plan: object = None) -> AssertionError:
        text = [f"check_policy({label}): {prop}: {why}", example.describe()]
        if plan is not None:
            text.append(_describe_plan(plan))
        return AssertionError("\n".join(text))

    def timed(
        example: PolicyInputs, health: dict[str, TargetHealth] | None = None
    ) -> tuple[Plan, float]:
        began = time.perf_counter()
        plan = example.plan(strategy, health=health)
        return plan, time.perf_counter() - began

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        report_multiple_bugs=False,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(drawn)
    def run(example: PolicyInputs) -> None:
        for i, c in enumerate(example.candidates):
            if c.index != i:
                raise ValueError(
                    f"check_policy(inputs=...) drew candidate [{i}] {c.target} with index "
                    f"{c.index}: the router numbers a route's candidates 0, 1, ... by "
                    "position (policy_inputs does too)"
                )
        try:
            plan, seconds = timed(example)
        except Exception as exc:
            hint = ""
            if isinstance(exc, (AttributeError, TypeError)):
                hint = " (the candidates are a tuple, as the router passes them)"
            raise fail("total", f"raised {type(exc).__name__}: {exc}{hint}", example) from exc
        # The second call, on a health copy kept to compare, is the determinism check's
        # too: the call right after the first, so that state kept between calls (a
        # round-robin counter) shows even when it cycles every other call.
        health = dict(example.health)
        try:
            again, _ = timed(example, health)
        except Exception as exc:
            raise fail(
                "deterministic", f"the second call raised {type(exc).__name__}: {exc}", example
            ) from exc
        if health != example.health:
            raise fail(
                "leaves its inputs alone",
                "it changed the health mapping it was given (the router's own)",
                example,
                plan,
            )
        problem = plan_problem(plan, example.candidates)
        if problem is not None:
            raise fail("a valid plan", problem, example, plan)
        for c in plan.targets:
            why = unfit(c, example.needs)
            if why is not None:
                raise fail(
                    "never an unfit target", f"planned {c.target}, which {why}", example, plan
                )
            if over_budget(c, example.needs, example.health) is not None:
                cost = estimated_cost(c, example.needs)
                left = health_of(example.health, c).budget_left
                why = f"planned {c.target}, estimated at ${cost:g}; its provider has ${left:g} left"
                raise fail("never over its provider's budget", why, example, plan)
        if again != plan:
            raise fail(
                "deterministic",
                "a second call with the same inputs and seed gave another plan:\n"
                + _describe_plan(again).replace("plan:", "second plan:", 1),
                example,
                plan,
            )
        if seconds > time_budget:
            seconds = min(seconds, *(timed(example)[1] for _ in range(2)))
            if seconds > time_budget:
                raise fail(
                    "fast",
                    f"a call took {seconds * 1e3:.1f} ms (best of three), over the "
                    f"{time_budget * 1e3:g} ms budget",
                    example,
                    plan,
                )
        times.append(seconds)

    if derandomize:
        # A fixed seed, not hypothesis's default for derandomize (a digest of run's
        # source): the examples stay the same when this function's code changes.
        run = seed(_SEED)(run)
    try:
        run()
    except Flaky as exc:
        # A failure that did not recur when hypothesis ran the same inputs again: the
        # strategy answers differently to equal calls.  Say so, with the first failure.
        first = _first_failure(exc)
        raise AssertionError(
            f"check_policy({label}): deterministic: a failure did not recur when the same "
            "inputs were tried again, so the strategy gives different answers to equal "
            "calls (state kept between calls, a clock, global randomness, id() or hash "
            "order?); the first failure:\n" + (first or repr(exc))
        ) from exc
    return PolicyCheck(
        strategy=label,
        examples=len(times),
        slowest=max(times, default=0.0),
        mean=sum(times) / len(times) if times else 0.0,
        time_budget=time_budget,
    )
