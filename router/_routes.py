"""Route resolution: a model string to its targets, and the plan for one request.

A model string is a route alias (``[routes.fast]``), ``provider:model``, or a bare model
id whose provider is found by its prefix (``gpt-*`` → an OpenAI provider...).  Each
resolves to a :class:`Route`: its candidates (with the capabilities, context window and
prices the config gives their models) and how to race them.  :meth:`Routes.plan_for`
then asks the pure policy (:mod:`router._policy`) for the request's plan, over the
targets' health and spend headroom as of now, and logs when a route enters or leaves
panic routing.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Mapping, Sequence

import msgspec

from providers import LLMError, NoRoute

from ._actor import ProviderActor
from ._budget import Budget
from ._config import DEFAULT_FAIL_OVER, HedgeConfig, ModelConfig, RouterConfig, model_info
from ._policy import (
    DEFAULT_PANIC_THRESHOLD,
    BuiltinStrategy,
    Candidate,
    Exclusion,
    HedgeBudget,
    Needs,
    Plan,
    Strategy,
    TargetHealth,
    unfit,
)
from ._race import HedgeCounters
from ._spend import Spend, make_budget
from ._statistics import Counters
from ._strategies import plan_problem, resolve, strategy_name

__all__ = ["MAX_RESOLVED", "Route", "Routes"]

logger = logging.getLogger("trio_llm_router")

#: Single targets resolved on first use ("openai:gpt-4o", "gpt-4o") kept at most.
MAX_RESOLVED = 1024

#: Bare model ids whose provider kind is known from their prefix.
_PREFIX_KINDS: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gemini"),
)


class Route:
    """A resolved model string: its candidates and how to race them."""

    __slots__ = (
        "candidates",
        "fail_over",
        "fail_over_retryable",
        "hedge",
        "hedge_budget",
        "hedge_counters",
        "lone",
        "lone_panic_plan",
        "lone_plan",
        "name",
        "panic_threshold",
        "panicking",
        "spend_budget",
        "strategy",
        "strategy_failing",
        "strategy_name",
        "user_strategy",
    )

    def __init__(
        self,
        name: str,
        candidates: tuple[Candidate, ...],
        *,
        strategy: str | Strategy = "fallback",
        hedge: HedgeConfig | None = None,
        fail_over_on: Sequence[str] = DEFAULT_FAIL_OVER,
        spend_budget: Budget | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self.name = name
        self.candidates = candidates
        #: The strategy, resolved (a built-in one carries the route's panic threshold).
        self.strategy: Strategy = resolve(strategy, panic_threshold)
        #: A strategy of the user's: its plans are checked at the boundary.
        self.user_strategy = not isinstance(self.strategy, BuiltinStrategy)
        self.strategy_name = strategy_name(strategy)
        #: Whether the strategy failed on the last request planned (to log once).
        self.strategy_failing = False
        #: One target and a built-in strategy: ``Routes.plan_for``'s fast path applies.
        self.lone = len(candidates) == 1 and not self.user_strategy
        self.hedge = hedge
        self.fail_over_retryable = "retryable" in fail_over_on
        self.fail_over = frozenset(fail_over_on) - {"retryable"}
        self.hedge_budget = (
            HedgeBudget(hedge.budget_ratio, hedge.budget_burst, start=hedge.max_attempts - 1)
            if hedge is not None and hedge.delay is not None
            else None
        )
        #: A hedged route's counts, for statistics (``None`` for one that does not hedge).
        self.hedge_counters = HedgeCounters() if self.hedge_budget is not None else None
        self.spend_budget = spend_budget
        #: The plan of a one-target route whose target fits the request.
        self.lone_plan = Plan(targets=candidates)
        self.panic_threshold = panic_threshold
        #: ... and of one whose target is unhealthy, in panic (threshold > 0).
        self.lone_panic_plan = Plan(
            targets=tuple(msgspec.structs.replace(c, panic=True) for c in candidates),
            panic=True,
        )
        #: Whether the last request planned was in panic (to log entering and leaving).
        self.panicking = False

    def fails_over(self, exc: LLMError) -> bool:
        """Whether ``exc`` on one target sends the request on to the next."""
        if self.fail_over_retryable and exc.retryable:
            return True
        return any(cls.__name__ in self.fail_over for cls in type(exc).__mro__)


def _text(exc: BaseException) -> str:
    """``str(exc)``, at most 500 characters, or a placeholder if it cannot be had."""
    try:
        text = str(exc)
    except Exception:
        return "<the exception's str() raised>"
    return text if len(text) <= 500 else text[:497] + "..."


class Routes:
    """The router's routes, and the single targets resolved on first use (bounded)."""

    __slots__ = (
        "_actors",
        "_counts",
        "_models",
        "_panic_threshold",
        "_resolved",
        "_rng",
        "_spend",
        "routes",
    )

    def __init__(
        self,
        config: RouterConfig,
        actors: Mapping[str, ProviderActor],
        spend: Spend,
        counts: Counters,
        rng: random.Random,
        start: float,
    ) -> None:
        self._actors = actors
        self._spend = spend
        self._counts = counts
        self._rng = rng
        self._models: dict[str, ModelConfig] = config.models
        self._panic_threshold = config.panic_threshold
        #: The configured routes, by alias.
        self.routes: dict[str, Route] = {
            alias: Route(
                alias,
                tuple(
                    self.candidate(target, index, None if rc.weights is None else rc.weights[index])
                    for index, target in enumerate(rc.targets)
                ),
                strategy=rc.strategy,
                hedge=rc.hedge,
                fail_over_on=rc.fail_over_on,
                spend_budget=make_budget(f"route {alias}", rc.budget, start),
                panic_threshold=(
                    config.panic_threshold if rc.panic_threshold is None else rc.panic_threshold
                ),
            )
            for alias, rc in config.routes.items()
        }
        self._resolved: dict[str, Route] = {}

    def budgets(self) -> list[Budget]:
        """The routes' spend caps."""
        return [r.spend_budget for r in self.routes.values() if r.spend_budget is not None]

    def candidate(self, target: str, index: int = 0, weight: float | None = None) -> Candidate:
        provider, _, model = target.partition(":")
        actor = self._actors[provider]
        info = model_info(self._models, target)
        caps = actor.provider.capabilities
        overrides = {
            name: getattr(info, name)
            for name in ("tools", "vision", "structured_output")
            if getattr(info, name) is not None
        }
        if overrides:
            # A model can narrow what its provider takes, never widen it.
            caps = msgspec.structs.replace(
                caps, **{k: v and getattr(caps, k) for k, v in overrides.items()}
            )
        return Candidate(
            provider=provider,
            model=model,
            index=index,
            weight=1.0 if weight is None else weight,
            capabilities=caps,
            context_window=info.context_window,
            input_price=info.input_price,
            output_price=info.output_price,
            cached_input_price=info.cached_input_price,
        )

    def route(self, model: str) -> Route:
        route = self.routes.get(model) or self._resolved.get(model)
        if route is not None:
            return route
        target = self.resolve_single(model)
        route = Route(model, (self.candidate(target),), panic_threshold=self._panic_threshold)
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[model] = route
        return route

    def resolve_single(self, model: str) -> str:
        provider, sep, model_id = model.partition(":")
        if sep:
            if provider not in self._actors or not model_id:
                raise NoRoute(
                    f"unknown provider {provider!r} in model {model!r}; configured providers: "
                    f"{sorted(self._actors)}; routes: {sorted(self.routes)}"
                )
            return model
        for prefix, kind in _PREFIX_KINDS:
            if model.startswith(prefix):
                for name, actor in self._actors.items():
                    if actor.provider.kind == kind:
                        return f"{name}:{model}"
        raise NoRoute(
            f"no provider or route for model {model!r}; use 'provider:model' with one of "
            f"{sorted(self._actors)}, or a route: {sorted(self.routes)}"
        )

    def rng_copy(self) -> random.Random:
        """A copy of the router's rng: plans drawn from it do not move the router's."""
        rng = random.Random()
        rng.setstate(self._rng.getstate())
        return rng

    def plan(
        self, route: Route, needs: Needs, now: float, rng: random.Random | None = None
    ) -> Plan:
        """The route's strategy over its candidates, their health and spend headroom,
        drawing from ``rng`` (the router's when ``None``)."""
        actors = self._actors
        health = {c.provider: actors[c.provider].policy_health(now) for c in route.candidates}
        for name, budget in self._spend.provider_budgets.items():
            if name in health:
                health[name] = msgspec.structs.replace(
                    health[name], budget_left=budget.headroom(now)
                )
        if rng is None:
            rng = self._rng
        if route.user_strategy:
            return self.checked_plan(route, needs, health, now, rng)
        return route.strategy(route.candidates, needs, health, now, rng)

    def checked_plan(
        self,
        route: Route,
        needs: Needs,
        health: Mapping[str, TargetHealth],
        now: float,
        rng: random.Random,
    ) -> Plan:
        """The plan of a strategy of the user's, checked at the boundary: one that raises,
        or returns something that is not a valid plan of the route's candidates, fails
        the request with a non-retryable NoRoute naming the strategy (its exception as
        the ``__cause__``), counted in ``strategy_errors`` and logged once per episode."""
        candidates = route.candidates
        cause: Exception | None = None
        try:
            plan = route.strategy(candidates, needs, health, now, rng)
        except Exception as exc:
            cause = exc
            what: str | None = f"{type(exc).__name__}: {_text(exc)}"
        else:
            try:
                what = plan_problem(plan, candidates)
            except Exception as exc:  # a plan whose parts misbehave (an __eq__ that raises)
                cause = exc
                what = f"returned a malformed plan ({type(exc).__name__}: {_text(exc)})"
            if what is None:
                if route.strategy_failing:
                    route.strategy_failing = False
                    logger.info(
                        "route %s: strategy %r planned again",
                        route.name,
                        route.strategy_name,
                        extra={"route": route.name, "strategy": route.strategy_name},
                    )
                return plan
            if inspect.iscoroutine(plan):
                plan.close()  # never awaited: say so once, in the error, not in a warning
        self._counts.strategy_errors += 1
        if not route.strategy_failing:
            route.strategy_failing = True
            logger.warning(
                "route %s: strategy %r failed: %s (the route's requests fail with NoRoute "
                "until it plans again; counted in strategy_errors)",
                route.name,
                route.strategy_name,
                what,
                extra={"route": route.name, "strategy": route.strategy_name},
            )
        raise NoRoute(
            f"strategy {route.strategy_name!r} for route {route.name!r} failed: {what}"
        ) from cause

    def plan_for(self, route: Route, needs: Needs, now: float) -> Plan:
        """The request's plan: :meth:`plan`, or, for a lone target without a provider
        cap, the same plan made without reading health while its breaker is closed."""
        candidates = route.candidates
        if not route.lone or candidates[0].provider in self._spend.provider_budgets:
            return self.plan(route, needs, now)
        # A lone target: the plan is plan_route's (the target, or its exclusion; in
        # panic when it is unhealthy and the threshold is above 0), reading health
        # only when its breaker is not closed.
        lone = candidates[0]
        # A breaker transition due now happens before the attempt starts (its event
        # comes first); a closed breaker answers at once.
        actor = self._actors[lone.provider]
        state = actor.breaker.state(now)
        reason = unfit(lone, needs)
        if reason is not None:
            return Plan(targets=(), excluded=(Exclusion(lone.target, reason),))
        if (
            (state != "closed" or actor.crashed is not None)
            and route.panic_threshold > 0.0
            and actor.policy_status(now) == "unhealthy"
        ):
            # 0 of 1 routable: below any threshold but 0 (plan_route's rule).
            return route.lone_panic_plan
        return route.lone_plan

    def panic(self, route: Route, plan: Plan, request_id: str) -> None:
        """Count a request planned in panic (or not), and log when the route enters or
        leaves panic: once per episode, not once per request."""
        if plan.panic:
            self._counts.panic_routed += 1
            if not route.panicking:
                route.panicking = True
                unhealthy = [c.target for c in plan.targets if c.panic]
                logger.warning(
                    "route %s: panic routing: %d of %d targets routable (threshold %g); "
                    "trying the unhealthy ones too: %s",
                    route.name,
                    len(plan.targets) - len(unhealthy),
                    len(plan.targets),
                    route.panic_threshold,
                    ", ".join(unhealthy),
                    extra={"route": route.name, "request_id": request_id, "panic": True},
                )
        else:
            route.panicking = False
            logger.info(
                "route %s: out of panic routing",
                route.name,
                extra={"route": route.name, "request_id": request_id, "panic": False},
            )
