"""Behaviours of router/_budget.py that its mutants showed no test pinned (docs/testing.md,
"Mutation testing"): the float slack of a reservation, reservations adding up, and
windows counted from the router's opening time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from router._budget import Budget


def test_reservations_add_up() -> None:
    """Each reservation adds to what is reserved: two of $0.40 leave $0.20 of a $1 cap."""
    b = Budget("router", limit=1.0, period=60.0, start=0.0)
    assert b.try_reserve(0.4, now=0.0)
    assert b.try_reserve(0.4, now=0.0)
    assert b.statistics(now=0.0).reserved == 0.8
    assert b.headroom(now=0.0) == 1.0 - 0.8
    assert not b.try_reserve(0.4, now=0.0)


def test_three_dimes_fill_a_thirty_cent_cap() -> None:
    """The float slack: 0.1 + 0.1 + 0.1 fits a $0.30 cap though 0.3 - 0.2 < 0.1 in floats."""
    b = Budget("router", limit=0.3, period=60.0, start=0.0)
    assert [b.try_reserve(0.1, now=0.0) for _ in range(3)] == [True, True, True]
    assert not b.try_reserve(0.1, now=0.0)


@settings(max_examples=50, deadline=None)
@given(
    limit=st.floats(0.01, 100.0),
    reserved=st.floats(0.0, 1.0),
    offset=st.sampled_from([-1e-9, -1e-13, 0.0, 1e-13, 1e-12, 2e-12, 1e-9]),
)
def test_reserve_iff_within_headroom_plus_slack(
    limit: float, reserved: float, offset: float
) -> None:
    """Invariant: ``try_reserve(a)`` succeeds iff ``a <= headroom + 1e-12``, the slack
    included at its edge (a slack of 1e-12 dollars, not less, not more)."""
    b = Budget("router", limit=limit, period=60.0, start=0.0)
    first = reserved * limit
    assert b.try_reserve(first, now=0.0)
    headroom = b.headroom(now=0.0)
    amount = headroom + 1e-12 + offset
    fits = amount <= headroom + 1e-12
    assert b.try_reserve(amount, now=0.0) is fits
    assert b.statistics(now=0.0).reserved == (first + amount if fits else first)


def test_windows_start_when_the_router_opened() -> None:
    """A budget opened at t=3 with a 10 s period keeps its spend until t=13, not t=7."""
    b = Budget("router", limit=1.0, period=10.0, start=3.0)
    assert b.try_reserve(0.5, now=3.5)
    b.settle(0.5, 0.5, now=4.0)
    stats = b.statistics(now=8.0)
    assert (stats.spent, stats.resets_at) == (0.5, 13.0)
    assert b.headroom(now=12.999) == 0.5
    assert b.headroom(now=13.0) == 1.0
    assert b.statistics(now=13.0).resets_at == 23.0
