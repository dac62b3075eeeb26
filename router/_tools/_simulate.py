"""The simulator: run route policies against a scenario, in virtual time, deterministically.

A scenario describes providers (a latency distribution, fault rates, limits, prices) and
the policies to compare (each a route over those providers).  Every policy is run in its
own ``trio.run`` on ``MockClock(autojump_threshold=0)``, through the real router —
actors, mailboxes, breakers, the race — over :class:`~providers.MockProvider`\\ s, so
an hour of traffic takes seconds and the same seed gives the same figures.

Common random numbers: what provider ``p`` does for request ``i`` is drawn from a random
stream seeded by ``(seed, p, i)``, so every policy faces exactly the same latencies and
faults; only its decisions differ.  Arrivals are a Poisson process seeded by ``seed``.

Synopsis::

    scenario = load_scenario("tail-at-scale.toml")        # or SimScenario(...)
    for result in simulate(scenario, requests=10_000):
        print(result.policy, result.p99, result.extra_attempts)

From the shell: ``llm-router simulate [SCENARIO] [--requests N] [--seed S] [--json FILE]``.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from importlib import resources

import msgspec
import trio
import trio.testing

from providers import (
    ChatRequest,
    ConfigError,
    LLMError,
    Message,
    RateLimited,
    ServerError,
    Usage,
)
from providers.testing import Fixed, Latency, MockProvider, MockResponse
from router import open_router
from router.config import BreakerConfig, ModelConfig, ProviderConfig, RouteConfig, RouterConfig

# Internal, and why: a scenario is validated exactly as a router config is (field
# paths in errors, each struct's _problems), so its errors read the same.
from .._validation import Problem, validate
from ._format import percentile, table_lines

__all__ = [
    "PolicyResult",
    "format_results",
    "SimProvider",
    "SimScenario",
    "hedging_bound",
    "load_scenario",
    "simulate",
]


class _Sim(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class SimProvider(_Sim, frozen=True):
    """One simulated provider: how it answers, how often it fails, its limits and prices.

    ``error_rate`` answers with a server error and ``rate_limit_rate`` with a 429 (after
    the drawn latency, with ``retry_after``); prices are dollars per million tokens.
    """

    latency: Latency = msgspec.field(default_factory=lambda: Fixed(0.5))
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    input_price: float | None = None
    output_price: float | None = None
    output_tokens: int = 200
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)

    def _problems(self) -> Iterator[Problem]:
        for name in ("error_rate", "rate_limit_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                yield (name,), f"must be in [0, 1], got {value}"
        if self.error_rate + self.rate_limit_rate > 1.0:
            yield ("error_rate",), "error_rate + rate_limit_rate must be at most 1"
        if self.output_tokens < 1:
            yield ("output_tokens",), f"must be >= 1, got {self.output_tokens}"


class SimScenario(_Sim, frozen=True):
    """A simulation: providers, policies to compare, and the traffic.

    ``rate`` is requests per second (Poisson arrivals); ``deadline`` a per-request
    deadline in seconds (``None``: none); ``input_tokens`` the prompt size.
    """

    providers: dict[str, SimProvider]
    policies: dict[str, RouteConfig]
    description: str = ""
    requests: int = 10_000
    rate: float = 20.0
    seed: int = 0
    input_tokens: int = 500
    deadline: float | None = None

    def _problems(self) -> Iterator[Problem]:
        if not self.providers:
            yield ("providers",), "must name at least one provider"
        if not self.policies:
            yield ("policies",), "must name at least one policy (a route)"
        if self.requests < 1:
            yield ("requests",), f"must be >= 1, got {self.requests}"
        if not 0.0 < self.rate < math.inf:
            yield ("rate",), f"must be a positive number, got {self.rate}"
        for name, policy in self.policies.items():
            for i, target in enumerate(policy.targets):
                provider = target.partition(":")[0]
                if provider not in self.providers:
                    yield (
                        ("policies", name, "targets", i),
                        f"{name!r} targets unknown provider {provider!r}; "
                        f"providers: {sorted(self.providers)}",
                    )


class PolicyResult(msgspec.Struct, frozen=True, kw_only=True):
    """The figures of one policy over one scenario; latencies in seconds.

    ``attempts`` counts every call that reached a provider — first tries, hedges,
    fallbacks and retries alike (an attempt refused at admission, by an open breaker or
    a full queue, sends nothing and is not counted) — and ``extra_attempts`` is the load
    beyond one call per request::

        extra_attempts = attempts / requests - 1

    ``hedges``, ``fallbacks`` and ``retries`` are the router's own counts of the extra
    attempts it started, by kind (``router.statistics()``); when every one of them
    reached its provider, ``attempts = requests + hedges + fallbacks + retries``.
    ``panic_routed`` counts requests planned in panic (docs/routing.md), and
    ``strategy_errors`` requests failed by the route's strategy (a strategy of yours
    that raised or returned an invalid plan: ``router.statistics().strategy_errors``).
    """

    policy: str
    requests: int
    succeeded: int
    success_rate: float
    p50: float
    p95: float
    p99: float
    p999: float
    mean: float
    attempts: int
    extra_attempts: float
    hedges: int
    fallbacks: int
    retries: int
    panic_routed: int
    wasted_tokens: int
    cost: float
    wasted_cost: float
    virtual_seconds: float
    strategy_errors: int = 0


def load_scenario(path: str | os.PathLike[str] | None = None) -> SimScenario:
    """Read a scenario TOML file; ``None`` loads the shipped Tail-at-Scale scenario.

    Raises:
        ConfigError: the file cannot be read or is invalid; ``path`` names the field.
    """
    if path is None:
        text = resources.files("router").joinpath("data/tail-at-scale.toml").read_text()
        source = "tail-at-scale.toml"
    else:
        source = os.fspath(path)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the scenario {source!r}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"cannot read the scenario {source!r}: not UTF-8 text "
                f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
            ) from None
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    return validate(raw, SimScenario, source=source)


# --------------------------------------------------------------------------- running


class _Draws:
    """What provider ``name`` does for request ``i``: common random numbers."""

    __slots__ = ("_base", "_provider", "_seen")

    def __init__(self, seed: int, index: int, provider: SimProvider) -> None:
        self._base = (seed * 1_000_003 + index) * 1_000_003
        self._provider = provider
        self._seen: dict[int, int] = {}

    def reply(self, request_index: int, prompt: int) -> MockResponse:
        k = self._seen.get(request_index, 0)
        self._seen[request_index] = k + 1
        rng = random.Random(self._base + request_index * 16 + min(k, 15))
        p = self._provider
        latency = p.latency.sample(rng)
        usage = Usage(input_tokens=prompt, output_tokens=p.output_tokens)
        u = rng.random()
        if u < p.error_rate:
            return MockResponse(error=ServerError("simulated server error"), latency=latency)
        if u < p.error_rate + p.rate_limit_rate:
            error = RateLimited("simulated rate limit", retry_after=p.retry_after)
            return MockResponse(error=error, latency=latency)
        return MockResponse(text="ok", latency=latency, usage=usage)


def _config(scenario: SimScenario, policy: RouteConfig) -> RouterConfig:
    providers = {
        name: ProviderConfig(
            kind="mock",
            rpm=p.rpm,
            tpm=p.tpm,
            max_concurrency=p.max_concurrency,
            max_queue=100_000,
            breaker=p.breaker,
        )
        for name, p in scenario.providers.items()
    }
    models = {
        target: ModelConfig(
            input_price=scenario.providers[target.partition(":")[0]].input_price,
            output_price=scenario.providers[target.partition(":")[0]].output_price,
        )
        for target in policy.targets
    }
    return RouterConfig(providers=providers, routes={"sim": policy}, models=models)


async def _run_policy(
    scenario: SimScenario, name: str, policy: RouteConfig, requests: int, seed: int
) -> PolicyResult:
    prompt = scenario.input_tokens
    mocks: dict[str, MockProvider] = {}
    # Calls that reached a provider: the upstream load, whatever kind of attempt sent them.
    sent = 0
    for index, (pname, p) in enumerate(sorted(scenario.providers.items())):
        draws = _Draws(seed, index, p)

        def answer(request: ChatRequest, draws: _Draws = draws) -> MockResponse:
            nonlocal sent
            sent += 1
            return draws.reply(int(request.metadata["i"]), prompt)

        mocks[pname] = MockProvider(name=pname, default=answer, record=False)

    latencies: list[float] = []
    cost = 0.0
    arrivals = random.Random(seed)
    # ~4 characters a token: a prompt the estimator sizes like the usage the mocks report.
    text = "x" * (4 * prompt)
    deadline = scenario.deadline

    async with open_router(_config(scenario, policy), providers=mocks, seed=seed) as router:
        start = trio.current_time()

        async def one(i: int) -> None:
            nonlocal cost
            request = ChatRequest(
                model="sim", messages=[Message.user(text)], metadata={"i": str(i)}
            )
            t0 = trio.current_time()
            try:
                if deadline is None:
                    response = await router.complete(request)
                else:
                    with trio.fail_after(deadline):
                        response = await router.complete(request)
            except (LLMError, trio.TooSlowError):
                return
            latencies.append(trio.current_time() - t0)
            cost += response.cost or 0.0

        async with trio.open_nursery() as nursery:
            at = start
            for i in range(requests):
                at += arrivals.expovariate(scenario.rate)
                await trio.sleep_until(at)
                nursery.start_soon(one, i)
        elapsed = trio.current_time() - start
        stats = router.statistics()

    latencies.sort()
    input_price = [p.input_price for p in scenario.providers.values() if p.input_price]
    waste_price = sum(input_price) / len(input_price) if input_price else 0.0
    n = len(latencies)
    return PolicyResult(
        policy=name,
        requests=requests,
        succeeded=n,
        success_rate=n / requests,
        p50=percentile(latencies, 0.50),
        p95=percentile(latencies, 0.95),
        p99=percentile(latencies, 0.99),
        p999=percentile(latencies, 0.999),
        mean=sum(latencies) / n if n else math.nan,
        attempts=sent,
        extra_attempts=sent / requests - 1.0,
        hedges=stats.hedges,
        fallbacks=stats.fallbacks,
        retries=stats.retries,
        panic_routed=stats.panic_routed,
        wasted_tokens=stats.wasted_tokens,
        cost=cost,
        wasted_cost=stats.wasted_tokens * waste_price / 1e6,
        virtual_seconds=elapsed,
        strategy_errors=stats.strategy_errors,
    )


def simulate(
    scenario: SimScenario,
    *,
    requests: int | None = None,
    seed: int | None = None,
    policies: Sequence[str] | None = None,
) -> list[PolicyResult]:
    """Run each policy of ``scenario`` (or those named) and return their figures.

    Deterministic: the same scenario, ``requests`` and ``seed`` give the same results.
    It calls ``trio.run`` itself, so call it from synchronous code (or a thread).

    Example::

        results = simulate(load_scenario(), requests=2_000)
        best = min(results, key=lambda r: r.p99)

    Raises:
        ConfigError: ``scenario`` (built in code) is invalid, validated as
            :func:`load_scenario` validates a file, or a named policy is unknown.
    """
    scenario = validate(scenario, SimScenario)  # built in code: checked as TOML is
    n = scenario.requests if requests is None else requests
    if n < 1:
        raise ValueError(f"requests must be >= 1, got {n}")
    s = scenario.seed if seed is None else seed
    names = list(scenario.policies) if policies is None else list(policies)
    unknown = sorted(set(names) - set(scenario.policies))
    if unknown:
        raise ConfigError(
            f"unknown policies {unknown}; the scenario has {sorted(scenario.policies)}"
        )
    results = []
    for name in names:
        clock = trio.testing.MockClock(autojump_threshold=0)
        results.append(
            trio.run(_run_policy, scenario, name, scenario.policies[name], n, s, clock=clock)
        )
    return results


def hedging_bound(
    scenario: SimScenario, primary: str, backup: str, extra_load: float, *, samples: int = 200_000
) -> tuple[float, float]:
    """The best p99 a hedging policy can reach with ``extra_load``, ignoring overheads.

    Hedging sends the backup only for requests still outstanding after a delay ``d``; to
    send at most ``extra_load`` extra requests, ``P(X₁ > d) ≤ extra_load``, so the
    earliest allowed delay is ``d* = quantile(X₁, 1 - extra_load)``, and any later delay
    only makes ``min(X₁, d + X₂)`` larger.  Returns ``(d*, p99 of min(X₁, d* + X₂))``
    by Monte Carlo over the scenario's distributions (faults ignored).
    """
    rng = random.Random(12345)
    first = scenario.providers[primary].latency
    second = scenario.providers[backup].latency
    xs = [first.sample(rng) for _ in range(samples)]
    ys = [second.sample(rng) for _ in range(samples)]
    d = percentile(xs, 1.0 - extra_load) if extra_load > 0 else math.inf
    return d, percentile([min(x, d + y) for x, y in zip(xs, ys, strict=True)], 0.99)


def format_results(scenario: SimScenario, results: Sequence[PolicyResult]) -> str:
    """The results as a plain-text table, one policy a row, with the hedging bound.

    ``extra`` is every call sent beyond one per request; ``hedge``, ``fallbk`` and
    ``retry`` split it by kind (each per request).  For each two-target hedged policy
    the last column is the best p99 any hedging policy could reach with the same extra
    load (:func:`hedging_bound`).
    """
    head = ["policy", "p50", "p95", "p99", "p99.9", "success", "extra", "hedge", "fallbk"]
    head += ["retry", "wasted tok", "cost $", "waste $", "p99 bound"]
    rows = [head]
    for r in results:
        policy = scenario.policies[r.policy]
        bound = ""
        if policy.hedge is not None and len(policy.targets) == 2 and 0 < r.extra_attempts < 1:
            a, b = (t.partition(":")[0] for t in policy.targets)
            bound = f"{hedging_bound(scenario, a, b, r.extra_attempts)[1]:.3f}s"
        n = r.requests
        rows.append(
            [
                r.policy,
                *("-" if math.isnan(x) else f"{x:.3f}s" for x in (r.p50, r.p95, r.p99, r.p999)),
                *(f"{x:.2%}" for x in (r.success_rate, r.extra_attempts)),
                *(f"{x / n:.2%}" for x in (r.hedges, r.fallbacks, r.retries)),
                str(r.wasted_tokens),
                f"{r.cost:.4f}",
                f"{r.wasted_cost:.4f}",
                bound,
            ]
        )
    widths = [14, 8, 8, 8, 8, 8, 7, 7, 7, 7, 11, 9, 8, 10]
    # Full-width lines, the bound column included when it is empty: as always printed.
    table = table_lines(rows, right=range(1, 14), widths=widths, sep=" ", rule=True, strip=False)
    lines = []
    if scenario.description:
        lines.append(scenario.description)
    n = results[0].requests if results else 0
    lines += [f"{n} requests per policy, virtual time, seed {scenario.seed}", "", *table[:2]]
    under = " " * (max([widths[0], *(len(r.policy) for r in results)]) + 1)  # column 2
    for r, line in zip(results, table[2:], strict=True):
        lines.append(line)
        if r.panic_routed:
            lines.append(f"{under}{r.panic_routed} requests routed in panic")
        if r.strategy_errors:
            lines.append(
                f"{under}{r.strategy_errors} requests failed by the strategy (it raised or "
                "returned an invalid plan)"
            )
    return "\n".join(lines)
