"""Routing policy: which targets may serve a request, and in what order.  Pure.

A policy is a function of what it is given and nothing else: a :class:`Strategy`::

    plan = strategy(candidates, needs, health, now, rng)

The five built-in ones are :class:`BuiltinStrategy` objects (``plan_route(candidates,
"least-cost", needs, health, now, rng)`` is a shorthand for calling one); a strategy of
your own is any callable with the same five parameters, named in a route by import path
(docs/routing.md).  :func:`unfit`, :func:`over_budget`, :func:`health_of` and
:func:`estimated_cost` are the built-ins' building blocks, public so a strategy of your
own can keep the same rules.

No I/O, no clock reads (``now`` is an argument), no global randomness (``rng`` is a
:class:`random.Random` the caller seeds).  That is what lets hypothesis drive it and the
simulator replay it: the same arguments give the same plan.

Filters run first, in this order, and every excluded target is listed in
:attr:`Plan.excluded` with the reason:

==============  ==================================================================
capabilities    the request needs tools, vision, structured output, streaming or
                embeddings and the target cannot take them
context window  estimated input tokens + output budget > the model's window
budget          the estimated cost would cross the provider's spend cap
health          ``degraded`` targets go after the healthy ones.  A target whose
                health is ``unhealthy`` (open breaker, every half-open probe slot
                taken, crashed) is excluded, unless the route is in *panic*
==============  ==================================================================

Panic routing, after Envoy's panic threshold: when the routable targets (healthy or
degraded) are fewer than ``panic_threshold`` of the capable ones::

    panic  iff  unhealthy > 0  and  routable < panic_threshold · capable

the unhealthy targets are planned too, after the others, marked
:attr:`Candidate.panic` so that their open breakers let the attempt through.  Rather
than fail everything when most targets look down, try them.  With the default 0.5, a
two-target route with one breaker open is not in panic (one of two is routable); with
both open, or a lone target whose breaker is open, it is.  With ``panic_threshold =
0`` there is no panic: the unhealthy targets are planned only when nothing else is
routable, unmarked, and their breakers refuse them at once (``Overloaded``, not
retryable, saying until when).

Then the built-in strategy orders each health group (healthy first, then degraded, then
unhealthy):

=================  ===============================================================
``fallback``       the route's order
``weighted``       a weighted random order: target ``i`` comes first with
                   probability ``wᵢ / Σw`` (Efraimidis-Spirakis keys ``u^(1/w)``)
``least-latency``  power of two choices: of two targets drawn at random the one
                   with the lower latency estimate goes first (a target with no
                   estimate yet counts as fastest, so it gets explored); the rest
                   follow by latency
``least-cost``     cheapest estimated cost for this request first
                   (``input·price_in + output·price_out``, per million tokens);
                   unknown prices last
``least-busy``     fewest requests in flight and queued first
=================  ===============================================================

Ties keep the route's order, so every strategy is deterministic for a given ``rng``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, get_args, runtime_checkable

import msgspec

from providers import Capabilities, ChatRequest, NoRoute, Usage
from providers._tokens import count_input_tokens

if TYPE_CHECKING:  # _config imports this module (RouteConfig.strategy is a Strategy)
    from ._config import HedgeConfig

__all__ = [
    "BUILTIN_STRATEGIES",
    "DEFAULT_PANIC_THRESHOLD",
    "BuiltinStrategy",
    "Candidate",
    "Exclusion",
    "HealthStatus",
    "HedgeBudget",
    "Needs",
    "Plan",
    "Strategy",
    "StrategyName",
    "TargetHealth",
    "cost_of",
    "estimated_cost",
    "health_of",
    "hedge_delay",
    "over_budget",
    "plan_route",
    "unfit",
]

HealthStatus: TypeAlias = Literal["healthy", "degraded", "unhealthy"]

#: The built-in strategies' names (``RouteConfig.strategy``).
StrategyName: TypeAlias = Literal[
    "fallback", "weighted", "least-latency", "least-cost", "least-busy"
]
#: The same, as a tuple, in the order the docs list them.
BUILTIN_STRATEGIES: tuple[StrategyName, ...] = get_args(StrategyName)


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One target of a route, with what the policy needs to know about it.

    ``index`` is its position in the route; ``provider`` the configured provider name
    (its actor); prices are US dollars per million tokens.
    """

    provider: str
    model: str
    index: int = 0
    weight: float = 1.0
    capabilities: Capabilities = msgspec.field(default_factory=Capabilities)
    context_window: int | None = None
    input_price: float | None = None
    output_price: float | None = None
    cached_input_price: float | None = None
    #: Planned in panic though unhealthy: its breaker lets the attempt through.
    panic: bool = False

    @property
    def target(self) -> str:
        """``provider:model``."""
        return f"{self.provider}:{self.model}"


class Needs(msgspec.Struct, frozen=True, kw_only=True):
    """What a request needs of its target: the policy's view of the request."""

    tools: bool = False
    vision: bool = False
    structured_output: bool = False
    streaming: bool = False
    embeddings: bool = False
    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def of(cls, request: ChatRequest, *, streaming: bool, default_max_tokens: int) -> Needs:
        """The needs of a chat request (input tokens counted exactly where an offline
        tokenizer knows ``request.model``, else estimated)."""
        response_format = request.response_format
        return cls(
            tools=bool(request.tools),
            vision=request.has_images,
            structured_output=response_format is not None and response_format.type != "text",
            streaming=streaming,
            input_tokens=count_input_tokens(request),
            output_tokens=request.max_tokens or default_max_tokens,
        )


class TargetHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The policy's view of a provider's health: a verdict, a latency, a load."""

    status: HealthStatus = "healthy"
    reason: str | None = None
    latency: float | None = None
    load: int = 0
    #: Dollars left under the provider's spend cap; ``None``: no cap.
    budget_left: float | None = None


_HEALTHY = TargetHealth()


class Exclusion(msgspec.Struct, frozen=True):
    """A target the policy left out, and why."""

    target: str
    reason: str


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """The targets to try, in order, and those left out with their reasons.

    ``panic`` says the route was in panic: too few targets were routable, so the
    unhealthy ones follow the others (each marked ``panic``).
    """

    targets: tuple[Candidate, ...]
    excluded: tuple[Exclusion, ...] = ()
    panic: bool = False

    def explain(self) -> str:
        """One line per excluded target: ``openai:gpt-4o: circuit open until t=12.000``."""
        return "; ".join(f"{e.target}: {e.reason}" for e in self.excluded)

    def raise_if_empty(self, model: str) -> None:
        """Raise :class:`~providers.NoRoute` saying why each target was excluded."""
        if not self.targets:
            raise NoRoute(f"no target can serve {model!r}: {self.explain()}")


def estimated_cost(candidate: Candidate, needs: Needs) -> float | None:
    """Dollars this request would cost on ``candidate``, if its prices are known.

    ``(input_tokens · input_price + output_tokens · output_price) / 1e6``, the output
    budget standing in for the output not yet generated.
    """
    if candidate.input_price is None or candidate.output_price is None:
        return None
    return (
        needs.input_tokens * candidate.input_price + needs.output_tokens * candidate.output_price
    ) / 1e6


def cost_of(candidate: Candidate, usage: Usage) -> float | None:
    """Dollars a finished request cost on ``candidate``, if its prices are known.

    ::

        cost = ((input - cached) · input_price + cached · cached_price
                + output · output_price) / 1e6

    with ``cached_price`` the input price when no cached price is set.
    """
    if candidate.input_price is None or candidate.output_price is None:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = (
        candidate.cached_input_price
        if candidate.cached_input_price is not None
        else candidate.input_price
    )
    return (
        (usage.input_tokens - cached) * candidate.input_price
        + cached * cached_price
        + usage.output_tokens * candidate.output_price
    ) / 1e6


def _incapable(c: Candidate, needs: Needs) -> str | None:
    wants = needs.tools or needs.vision or needs.structured_output
    if not (wants or needs.streaming or needs.embeddings):
        return None  # needs nothing any target could lack
    caps = c.capabilities
    for needed, able, what in (
        (needs.tools, caps.tools, "tools"),
        (needs.vision, caps.vision, "images"),
        (needs.structured_output, caps.structured_output, "structured output"),
        (needs.streaming, caps.streaming, "streaming"),
        (needs.embeddings, caps.embeddings, "embeddings"),
    ):
        if needed and not able:
            return f"cannot take {what}"
    return None


def _order(
    group: list[Candidate],
    strategy: StrategyName,
    needs: Needs,
    health: Mapping[str, TargetHealth],
    rng: random.Random,
) -> list[Candidate]:
    if len(group) <= 1 or strategy == "fallback":
        return group
    if strategy == "weighted":
        # Efraimidis-Spirakis: sorting by u^(1/w) descending is a weighted draw without
        # replacement; one rng.random() per target, so the order is reproducible.
        keys = {c.index: rng.random() ** (1.0 / c.weight) for c in group}
        return sorted(group, key=lambda c: -keys[c.index])
    if strategy == "least-cost":
        return sorted(group, key=lambda c: _cost_key(c, needs))
    if strategy == "least-busy":
        return sorted(group, key=lambda c: health.get(c.provider, _HEALTHY).load)

    def latency(c: Candidate) -> float:
        value = health.get(c.provider, _HEALTHY).latency
        return 0.0 if value is None else value

    # least-latency: power of two choices for the first, then by latency.
    a, b = rng.sample(range(len(group)), 2)
    first = group[a] if (latency(group[a]), a) <= (latency(group[b]), b) else group[b]
    rest = sorted((c for c in group if c is not first), key=latency)
    return [first, *rest]


def _cost_key(c: Candidate, needs: Needs) -> float:
    cost = estimated_cost(c, needs)
    return math.inf if cost is None else cost


# ------------------------------------------------------------------- building blocks


def unfit(c: Candidate, needs: Needs) -> str | None:
    """Why ``c`` cannot take a request with ``needs`` (a capability, its context
    window), or ``None``: the first filter of every built-in strategy.

    A strategy of your own should exclude a candidate for which this is not ``None``
    (with this reason): the attempt would fail anyway (``UnsupportedFeature``,
    ``ContextLengthExceeded``).

    Example::

        >>> unfit(Candidate(provider="a", model="m", context_window=100),
        ...       Needs(input_tokens=90, output_tokens=20))
        'needs ~110 tokens (90 in + 20 out), its context window is 100'
    """
    reason = _incapable(c, needs)
    if reason is None and c.context_window is not None:
        size = needs.input_tokens + needs.output_tokens
        if size > c.context_window:
            reason = (
                f"needs ~{size} tokens ({needs.input_tokens} in + {needs.output_tokens} "
                f"out), its context window is {c.context_window}"
            )
    return reason


def health_of(health: Mapping[str, TargetHealth], c: Candidate) -> TargetHealth:
    """``c``'s provider's health (a provider missing from ``health`` is healthy).

    Example::

        >>> health_of({}, Candidate(provider="a", model="m")).status
        'healthy'
    """
    return health.get(c.provider, _HEALTHY)


def over_budget(c: Candidate, needs: Needs, health: Mapping[str, TargetHealth]) -> str | None:
    """Why this request on ``c`` would cross its provider's spend cap, or ``None``: the
    second filter of every built-in strategy (``TargetHealth.budget_left``).

    Example::

        >>> c = Candidate(provider="a", model="m", input_price=1.0, output_price=1.0)
        >>> over_budget(c, Needs(input_tokens=10**6), {"a": TargetHealth(budget_left=0.5)})
        '~$1.0000 would cross its provider's spend cap ($0.5000 left)'
    """
    left = health.get(c.provider, _HEALTHY).budget_left
    cost = None if left is None else estimated_cost(c, needs)
    if cost is not None and left is not None and cost > left:
        return f"~${cost:.4f} would cross its provider's spend cap (${left:.4f} left)"
    return None


#: Envoy's default: panic when fewer than half of the targets are routable.
DEFAULT_PANIC_THRESHOLD = 0.5


# ------------------------------------------------------------------------ strategies


@runtime_checkable
class Strategy(Protocol):
    """How a route plans one request: the protocol every strategy meets, built-in or yours.

    A strategy is called once per request with the route's candidates (in the route's
    order), what the request needs, each provider's health by provider name (a provider
    missing from it is healthy), trio's ``now`` and the router's seeded
    :class:`random.Random`, and returns the :class:`Plan`: the targets to try, in order,
    and an :class:`Exclusion` (target, reason) for **every** candidate it does not plan.
    A plain function with these five parameters is a strategy; so is an object whose
    ``__call__`` takes them.

    It must be pure: no I/O, no clock (use ``now``), no global randomness (use ``rng``),
    so the same arguments give the same plan and hypothesis and the simulator can drive
    it.  It should respect :func:`unfit` and :func:`over_budget`, and keep ``unhealthy``
    targets (:func:`health_of`) out unless it means to try them (mark those
    ``Candidate.panic`` so their open breakers let the attempt through).

    The router checks a plan from a strategy of yours at the boundary (docs/routing.md):
    raising, returning something that is not a ``Plan``, planning a target that is not a
    candidate or planning one twice, or leaving a candidate neither planned nor excluded,
    fails the request with :class:`~providers.NoRoute` naming the strategy.

    Example::

        def cheapest_healthy(candidates, needs, health, now, rng):
            excluded, usable = [], []
            for c in candidates:
                why = unfit(c, needs) or over_budget(c, needs, health)
                if why is None and health_of(health, c).status == "unhealthy":
                    why = health_of(health, c).reason or "unhealthy"
                if why is None:
                    usable.append(c)
                else:
                    excluded.append(Exclusion(c.target, why))
            usable.sort(key=lambda c: estimated_cost(c, needs) or 0.0)
            return Plan(targets=tuple(usable), excluded=tuple(excluded))
    """

    def __call__(
        self,
        candidates: Sequence[Candidate],
        needs: Needs,
        health: Mapping[str, TargetHealth],
        now: float,
        rng: random.Random,
    ) -> Plan:
        """The plan for one request over ``candidates``."""
        ...


class BuiltinStrategy:
    """One of the five built-in strategies, as a :class:`Strategy`.

    ``name`` is the ordering (``"fallback"``, ``"weighted"``, ``"least-latency"``,
    ``"least-cost"``, ``"least-busy"``; see the module docstring) and
    ``panic_threshold`` the route's panic threshold.  Calling it filters (:func:`unfit`,
    :func:`over_budget`, health), orders each health group by ``name`` and applies
    panic routing.  A strategy of your own may call one and adjust its plan.

    Example::

        >>> least_cost = BuiltinStrategy("least-cost")
        >>> plan = least_cost([Candidate(provider="a", model="m")], Needs(), {}, 0.0,
        ...                   random.Random(1))
        >>> [c.target for c in plan.targets]
        ['a:m']
    """

    __slots__ = ("name", "panic_threshold")

    def __init__(
        self, name: StrategyName, panic_threshold: float = DEFAULT_PANIC_THRESHOLD
    ) -> None:
        if name not in BUILTIN_STRATEGIES:
            raise ValueError(
                f"unknown strategy {name!r}; the built-in ones: {', '.join(BUILTIN_STRATEGIES)}"
            )
        self.name: StrategyName = name
        self.panic_threshold = panic_threshold

    def __repr__(self) -> str:
        return f"BuiltinStrategy({self.name!r}, panic_threshold={self.panic_threshold:g})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BuiltinStrategy):
            return NotImplemented
        return (self.name, self.panic_threshold) == (other.name, other.panic_threshold)

    def __hash__(self) -> int:
        return hash((self.name, self.panic_threshold))

    def __call__(
        self,
        candidates: Sequence[Candidate],
        needs: Needs,
        health: Mapping[str, TargetHealth],
        now: float,
        rng: random.Random,
    ) -> Plan:
        """Filter and order ``candidates`` for one request (see the module docstring)."""
        del now  # no built-in strategy depends on time; the signature keeps one pure if so
        strategy = self.name
        excluded: list[Exclusion] = []
        capable: list[Candidate] = []
        for c in candidates:
            reason = unfit(c, needs)
            if reason is None and health.get(c.provider, _HEALTHY).budget_left is not None:
                reason = over_budget(c, needs, health)
            if reason is None:
                capable.append(c)
            else:
                excluded.append(Exclusion(c.target, reason))

        groups: dict[HealthStatus, list[Candidate]] = {
            "healthy": [],
            "degraded": [],
            "unhealthy": [],
        }
        for c in capable:
            groups[health.get(c.provider, _HEALTHY).status].append(c)
        ordered = _order(groups["healthy"], strategy, needs, health, rng)
        ordered += _order(groups["degraded"], strategy, needs, health, rng)
        unhealthy = groups["unhealthy"]
        if not unhealthy:
            return Plan(targets=tuple(ordered), excluded=tuple(excluded))
        if len(ordered) < self.panic_threshold * len(capable):
            # Panic: too few routable targets to carry the route; try the rest, last.
            last = _order(unhealthy, strategy, needs, health, rng)
            ordered += [msgspec.structs.replace(c, panic=True) for c in last]
            return Plan(targets=tuple(ordered), excluded=tuple(excluded), panic=True)
        if ordered:
            for c in unhealthy:
                why = health.get(c.provider, _HEALTHY).reason or "unhealthy"
                excluded.append(Exclusion(c.target, why))
        else:
            # No panic (threshold 0) and nothing routable: each breaker refuses at once.
            ordered = _order(unhealthy, strategy, needs, health, rng)
        return Plan(targets=tuple(ordered), excluded=tuple(excluded))


def plan_route(
    candidates: Sequence[Candidate],
    strategy: StrategyName,
    needs: Needs,
    health: Mapping[str, TargetHealth],
    now: float,
    rng: random.Random,
    *,
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
) -> Plan:
    """The plan of built-in ``strategy`` for one request: a shorthand for
    ``BuiltinStrategy(strategy, panic_threshold)(candidates, needs, health, now, rng)``.

    Args:
        candidates: the route's targets, in the route's order.
        strategy: the name of a built-in strategy.
        needs: what the request needs.
        health: each provider's health by provider name (missing means healthy).
        now: trio time; part of the contract so that time-dependent policies stay pure.
        rng: the only source of randomness.
        panic_threshold: below this share of routable capable targets, plan the
            unhealthy ones too (panic); 0 never panics.

    Raises:
        ValueError: ``strategy`` is not a built-in strategy's name.

    Example::

        plan = plan_route(candidates, "least-latency", needs, health, now, random.Random(1))
        plan.raise_if_empty("fast")
        for target in plan.targets: ...
    """
    return BuiltinStrategy(strategy, panic_threshold)(candidates, needs, health, now, rng)


# --------------------------------------------------------------------------- hedging


def hedge_delay(config: HedgeConfig, percentile: float | None, samples: int) -> float:
    """Seconds to wait before the next hedge; ``math.inf`` when the route does not hedge.

    ::

        delay = config.delay                                   if it is a number
        delay = clamp(percentile, min_delay, max_delay)        if samples ≥ min_samples
        delay = clamp(default_delay, min_delay, max_delay)     otherwise (cold start)

    ``percentile`` is the primary's observed latency at the configured quantile and
    ``samples`` how many observations it rests on.

    Example::

        >>> hedge_delay(HedgeConfig(delay="p95", min_samples=1), 0.8, samples=50)
        0.8
        >>> hedge_delay(HedgeConfig(delay=0.25), None, samples=0)
        0.25
    """
    delay = config.delay
    if delay is None:
        return math.inf
    if not isinstance(delay, str):
        return float(delay)
    value = (
        percentile
        if percentile is not None and samples >= config.min_samples
        else config.default_delay
    )
    return min(max(value, config.min_delay), config.max_delay)


# Hedge tokens are counted in millionths: exact integer arithmetic, so ten deposits of
# 0.1 make exactly one hedge (in floats they make 0.9999999999999999).
_MICRO = 1_000_000


class HedgeBudget:
    """The extra-load cap of a hedged route: a token bucket counted in hedges.

    Every request on the route deposits ``ratio`` tokens (never above ``burst``); every
    hedge spends one whole token, and is not sent without one::

        start:    tokens = min(burst, start)       # start = max_attempts - 1 for a route
        request:  tokens = min(burst, tokens + ratio)
        hedge:    sent iff tokens ≥ 1, then tokens -= 1

    A cold route starts with enough for one fully hedged request (``max_attempts - 1``
    hedges), not a full bucket: with the defaults (ratio 0.1, burst 10, two attempts)
    a router's first ten slow requests are not all hedged; the first may be, then one
    in ten.  So, with ``ratio`` and ``burst`` taken to six decimals (tokens are kept in
    millionths, exactly)::

        over the first n requests:       hedges ≤ ratio · n + min(burst, start)
        over any n consecutive requests: hedges ≤ ratio · n + burst

    The burst lets a route that has been calm save up for a slow spell; it is earned at
    ``ratio`` per request, never granted up front (gRPC's retry throttle starts full,
    but it caps failures, not load; Finagle's and Envoy's budgets grant a small floor,
    like the ``start`` tokens here).

    Example::

        >>> budget = HedgeBudget(ratio=0.1, burst=10.0)   # start: one hedge
        >>> budget.deposit(); budget.try_spend(), budget.try_spend()
        (True, False)
        >>> for _ in range(9):
        ...     budget.deposit()
        >>> budget.try_spend()   # 1.1 - 1 + 9 · 0.1 = 1.0 token
        True
    """

    __slots__ = ("_burst", "_micro", "_ratio")

    def __init__(self, ratio: float, burst: float, *, start: float = 1.0) -> None:
        self._ratio = round(ratio * _MICRO)
        self._burst = round(burst * _MICRO)
        self._micro = min(self._burst, round(start * _MICRO))

    def __repr__(self) -> str:
        return f"HedgeBudget(tokens={self.tokens:g}, ratio={self.ratio:g}, burst={self.burst:g})"

    @property
    def ratio(self) -> float:
        """Tokens a request deposits (hedges earned per request)."""
        return self._ratio / _MICRO

    @property
    def burst(self) -> float:
        """The most tokens the budget holds."""
        return self._burst / _MICRO

    @property
    def tokens(self) -> float:
        """Tokens now: hedges that could be sent at once is ``floor(tokens)``."""
        return self._micro / _MICRO

    def deposit(self) -> None:
        """One request arrived on the route."""
        self._micro = min(self._burst, self._micro + self._ratio)

    def try_spend(self) -> bool:
        """Take a token for one hedge, if there is one; never blocks."""
        if self._micro >= _MICRO:
            self._micro -= _MICRO
            return True
        return False
