"""The simulator: scenarios, determinism, the Tail-at-Scale result, the bound, the CLI.

``simulate`` calls ``trio.run`` itself, so these tests are synchronous.  Request counts
are small (a few hundred to 2,000) so the whole file runs in a few seconds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import msgspec
import pytest

from providers import ConfigError
from providers.testing import Fixed, Uniform
from router._config import HedgeConfig, RouteConfig
from router._health import BreakerConfig
from router._tools._simulate import format_results
from router.testing import (
    PolicyResult,
    SimProvider,
    SimScenario,
    hedging_bound,
    load_scenario,
    simulate,
)
from tests import _cli_runner

SHIPPED_POLICIES = ["fallback", "hedged-p95", "hedged-p97", "parallel"]


@pytest.fixture(scope="module")
def shipped() -> SimScenario:
    return load_scenario()


@pytest.fixture(scope="module")
def tail_results(shipped: SimScenario) -> dict[str, PolicyResult]:
    """The shipped scenario's policies over 2,000 requests (shared by several tests)."""
    return {r.policy: r for r in simulate(shipped, requests=2_000)}


# --------------------------------------------------------------------------- scenarios


def test_load_scenario_loads_the_shipped_tail_at_scale(shipped: SimScenario) -> None:
    """With no path, the shipped Tail-at-Scale scenario loads: two similar providers with
    2% stalls, and the four policies it compares."""
    assert set(shipped.providers) == {"a", "b"}
    assert list(shipped.policies) == SHIPPED_POLICIES
    assert shipped.description.startswith("Tail at Scale")
    assert (shipped.requests, shipped.rate, shipped.seed) == (10_000, 20.0, 1)
    assert shipped.policies["fallback"].hedge is None
    assert shipped.policies["hedged-p95"].hedge == HedgeConfig(max_attempts=2, delay="p95")
    assert shipped.providers["a"].latency == shipped.providers["b"].latency


def test_load_scenario_reads_a_file(tmp_path: Path) -> None:
    """A scenario file decodes into the same structures, defaults filled in."""
    path = tmp_path / "s.toml"
    path.write_text(
        'requests = 50\n[providers.x]\nlatency = { dist = "fixed", seconds = 0.25 }\n'
        'error_rate = 0.1\n[policies.only]\ntargets = ["x:m"]\n'
    )
    scenario = load_scenario(path)
    assert scenario.providers == {"x": SimProvider(latency=Fixed(0.25), error_rate=0.1)}
    assert scenario.policies == {"only": RouteConfig(targets=["x:m"])}
    assert (scenario.requests, scenario.rate) == (50, 20.0)


BASE = '[providers.x]\n{provider}\n[policies.p]\ntargets = ["x:m"]\n{policy}\n'


@pytest.mark.parametrize(
    ("top", "provider", "policy", "path"),
    [
        pytest.param("", "error_rate = 2.0", "", "$.providers.x.error_rate"),
        pytest.param("", "output_tokens = 0", "", "$.providers.x.output_tokens"),
        pytest.param("rate = 0.0", "", "", "$.rate"),
        ("", 'rpm = "fast"', "", "$.providers.x.rpm"),
        ("", "bogus = 1", "", "$.providers.x.bogus"),
        ('requests = "many"', "", "", "$.requests"),
        ("", "", "hedge = { max_attempts = 9 }", "$.policies.p.hedge.max_attempts"),
        ("", 'latency = { dist = "lognormal", median = 0.5 }', "", "$.providers.x.latency"),
    ],
    ids=[
        "error-rate",
        "output-tokens",
        "rate",
        "rpm-type",
        "unknown-field",
        "requests-type",
        "max-attempts",
        "latency-missing-sigma",
    ],
)
def test_a_bad_scenario_is_a_config_error_naming_the_field(
    tmp_path: Path, top: str, provider: str, policy: str, path: str
) -> None:
    """Every invalid value is a ConfigError whose ``path`` names the field and whose
    message names the file."""
    file = tmp_path / "bad.toml"
    file.write_text(top + "\n" + BASE.format(provider=provider, policy=policy))
    with pytest.raises(ConfigError) as info:
        load_scenario(file)
    assert info.value.path == path
    assert str(file) in str(info.value)
    assert str(info.value).startswith(path + ":")


def test_unreadable_or_malformed_scenarios_name_the_file(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are ConfigErrors naming the file."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot read the scenario") as info:
        load_scenario(missing)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_scenario(garbage)
    assert str(garbage) in str(info.value)


def test_a_policy_naming_an_unknown_provider_is_rejected(tmp_path: Path) -> None:
    """A policy targeting a provider the scenario does not define is a ConfigError."""
    file = tmp_path / "s.toml"
    file.write_text('[providers.x]\n[policies.p]\ntargets = ["y:m"]\n')
    with pytest.raises(ConfigError, match="unknown provider 'y'"):
        load_scenario(file)


# --------------------------------------------------------------------------- simulate


def test_simulate_is_deterministic_for_a_seed(shipped: SimScenario) -> None:
    """The same scenario, request count and seed give identical figures; another seed
    gives different ones."""
    first = simulate(shipped, requests=300, seed=7)
    again = simulate(shipped, requests=300, seed=7)
    other = simulate(shipped, requests=300, seed=8)
    assert first == again
    assert [r.policy for r in first] == SHIPPED_POLICIES
    assert all(r.requests == 300 for r in first)
    assert [(r.p50, r.p99, r.virtual_seconds) for r in first] != [
        (r.p50, r.p99, r.virtual_seconds) for r in other
    ]


def test_hedging_cuts_the_tail_at_a_few_percent_extra_load(
    tail_results: dict[str, PolicyResult],
) -> None:
    """Tail at Scale: hedging at the primary's p95 cuts fallback's p99 (a 25 s stall) at
    least fivefold for at most 8% extra attempts, and leaves the median untouched."""
    fallback, hedged = tail_results["fallback"], tail_results["hedged-p95"]
    assert fallback.success_rate == hedged.success_rate == 1.0
    assert fallback.p99 > 10.0  # the stalls are the tail
    assert hedged.p99 * 5 <= fallback.p99
    assert 0.0 < hedged.extra_attempts <= 0.08
    assert fallback.extra_attempts == 0.0
    assert hedged.hedges > 0
    assert fallback.hedges == 0
    # Common random numbers: requests answered before the delay see the same latencies
    # under both policies, so the median is the very same number.
    assert hedged.p50 == fallback.p50
    # p97 hedges later: fewer extra attempts.
    assert tail_results["hedged-p97"].extra_attempts < hedged.extra_attempts


def test_parallel_pays_one_extra_attempt_per_request(
    tail_results: dict[str, PolicyResult],
) -> None:
    """delay 0 sends both targets every time: 100% extra attempts, the lowest tail."""
    parallel = tail_results["parallel"]
    assert parallel.extra_attempts == 1.0
    assert parallel.p99 <= min(r.p99 for r in tail_results.values())
    assert parallel.wasted_tokens > tail_results["hedged-p95"].wasted_tokens


def test_policy_results_are_consistent(tail_results: dict[str, PolicyResult]) -> None:
    """Every result's figures agree with each other: ordered percentiles, counts, rates."""
    for r in tail_results.values():
        assert r.requests == 2_000
        assert r.succeeded == round(r.success_rate * r.requests)
        assert r.p50 <= r.p95 <= r.p99 <= r.p999
        assert r.attempts == round((1 + r.extra_attempts) * r.requests)
        assert r.cost > 0
        assert r.virtual_seconds > 0


def test_simulate_a_scenario_built_in_code() -> None:
    """A SimScenario made in code runs too: a failing primary is failed over, so every
    request succeeds, none faster than the backup's fixed latency."""
    scenario = SimScenario(
        providers={
            "a": SimProvider(latency=Fixed(0.25), error_rate=1.0),
            "b": SimProvider(latency=Fixed(0.5)),
        },
        policies={"fo": RouteConfig(targets=["a:m", "b:m"])},
        requests=200,
        rate=5.0,
    )
    (result,) = simulate(scenario)
    assert result.success_rate == 1.0
    assert result.p50 >= 0.5
    assert result.fallbacks > 0


def test_extra_load_counts_retries_and_splits_by_kind() -> None:
    """Every call sent upstream counts in the extra load, retries too (they used to be
    left out): attempts = requests + hedges + fallbacks + retries, and the table shows
    hedges, fallbacks and retries in their own columns."""
    steady = BreakerConfig(minimum_calls=100_000)  # no trips: every attempt is sent
    scenario = SimScenario(
        providers={
            "a": SimProvider(latency=Fixed(0.1), error_rate=0.2, breaker=steady),
            "b": SimProvider(latency=Fixed(0.2)),
        },
        policies={
            "lone": RouteConfig(targets=["a:m"]),
            "fallback": RouteConfig(targets=["a:m", "b:m"]),
            "hedged": RouteConfig(
                targets=["a:m", "b:m"], hedge=HedgeConfig(delay=0.05, budget_ratio=0.5)
            ),
        },
        requests=500,
        rate=5.0,
    )
    results = {r.policy: r for r in simulate(scenario)}
    lone, fallback, hedged = results["lone"], results["fallback"], results["hedged"]
    assert lone.retries > 50
    assert fallback.retries + fallback.fallbacks > 0
    assert hedged.hedges > 0
    for r in results.values():
        assert r.attempts == r.requests + r.hedges + r.fallbacks + r.retries, r
        assert r.extra_attempts == pytest.approx((r.hedges + r.fallbacks + r.retries) / r.requests)
    table = format_results(scenario, list(results.values()))
    head = next(line for line in table.splitlines() if line.startswith("policy"))
    assert head.split()[6:10] == ["extra", "hedge", "fallbk", "retry"]
    row = next(line for line in table.splitlines() if line.startswith("lone"))
    assert row.split()[6:10] == [
        f"{lone.extra_attempts:.2%}",
        "0.00%",
        "0.00%",
        f"{lone.retries / lone.requests:.2%}",
    ]


def test_simulate_rejects_unknown_policies_and_no_requests(shipped: SimScenario) -> None:
    """Naming a policy the scenario lacks is a ConfigError; zero requests a ValueError."""
    with pytest.raises(ConfigError, match="nope"):
        simulate(shipped, requests=10, policies=["nope"])
    with pytest.raises(ValueError, match="requests"):
        simulate(shipped, requests=0)


# --------------------------------------------------------------------------- the bound


def _two(primary: SimProvider, backup: SimProvider) -> SimScenario:
    return SimScenario(
        providers={"p": primary, "q": backup},
        policies={"h": RouteConfig(targets=["p:m", "q:m"])},
    )


def test_hedging_bound_delay_is_the_one_minus_extra_quantile() -> None:
    """The bound's delay is the primary's (1 - extra) quantile: 9.5 s for Uniform(0, 10)
    at 5% extra; its p99 is then min(X₁, d + X₂) = d + 0.1 with a 0.1 s backup."""
    scenario = _two(SimProvider(latency=Uniform(0.0, 10.0)), SimProvider(latency=Fixed(0.1)))
    d, p99 = hedging_bound(scenario, "p", "q", 0.05, samples=40_000)
    assert d == pytest.approx(9.5, abs=0.1)
    assert p99 == pytest.approx(d + 0.1, abs=1e-9)
    d, _ = hedging_bound(scenario, "p", "q", 0.25, samples=40_000)
    assert d == pytest.approx(7.5, abs=0.1)


def test_hedging_bound_of_a_fixed_primary_and_no_extra_load() -> None:
    """A fixed primary's quantile is its latency; with no extra load the delay is infinite
    and the p99 is the primary's own."""
    scenario = _two(SimProvider(latency=Fixed(2.0)), SimProvider(latency=Fixed(0.5)))
    assert hedging_bound(scenario, "p", "q", 0.05, samples=1_000) == (2.0, 2.0)
    d, p99 = hedging_bound(scenario, "p", "q", 0.0, samples=1_000)
    assert (d, p99) == (math.inf, 2.0)


def test_hedging_bound_is_below_what_the_router_achieves(
    shipped: SimScenario, tail_results: dict[str, PolicyResult]
) -> None:
    """The bound (no overheads, perfect delay) is at most the hedged policy's p99 with the
    same extra load, within Monte Carlo noise."""
    hedged = tail_results["hedged-p95"]
    d, p99 = hedging_bound(shipped, "a", "b", hedged.extra_attempts, samples=50_000)
    assert 0.5 < d < 2.0
    assert p99 <= hedged.p99 * 1.1


# --------------------------------------------------------------------------- the CLI


def test_cli_simulate_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    """``llm-router simulate --requests 200 --json FILE`` exits 0, prints one row per
    policy, and writes JSON that decodes to one PolicyResult per policy."""
    out = tmp_path / "results.json"
    proc = _cli_runner.run(
        ["simulate", "--requests", "200", "--json", str(out)], env=dict(os.environ), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:4] == ["policy", "p50", "p95", "p99"] for line in lines if line)
    assert "200 requests per policy" in proc.stdout
    rows = [
        line.split()[0] for line in lines if line.split() and line.split()[0] in SHIPPED_POLICIES
    ]
    assert rows == SHIPPED_POLICIES
    results = msgspec.json.decode(out.read_bytes(), type=list[PolicyResult])
    assert [r.policy for r in results] == SHIPPED_POLICIES
    assert all(r.requests == 200 for r in results)


def test_cli_simulate_reports_a_bad_scenario_in_one_line(tmp_path: Path) -> None:
    """A bad scenario file: exit status 1 and one error line naming the file and field."""
    bad = tmp_path / "bad.toml"
    bad.write_text('requests = "many"\n[providers.x]\n[policies.p]\ntargets = ["x:m"]\n')
    proc = _cli_runner.run(["simulate", str(bad)], env=dict(os.environ), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("llm-router: error: $.requests:")
    assert str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr
