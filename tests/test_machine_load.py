"""The load factor that stretches the tests' hang-only real-time bounds (tests/_helpers.py)."""

from __future__ import annotations

import os

import pytest

from tests._helpers import machine_load


def _machine(monkeypatch: pytest.MonkeyPatch, load: float, cpus: int) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))


@pytest.mark.parametrize(
    ("load", "cpus", "factor"),
    [(0.3, 2, 1.0), (2.0, 2, 1.0), (8.0, 2, 4.0), (13.5, 2, 6.75), (8.0, 16, 1.0)],
)
def test_the_factor_is_the_load_per_usable_cpu_and_never_below_one(
    monkeypatch: pytest.MonkeyPatch, load: float, cpus: int, factor: float
) -> None:
    """Load 8 on 2 usable CPUs stretches a bound 4 times; an idle or big machine, not at all."""
    _machine(monkeypatch, load, cpus)
    assert machine_load() == factor


def test_an_unknown_load_stretches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the load average cannot be read, the bounds stay as written."""

    def unreadable() -> tuple[float, float, float]:
        raise OSError("no /proc/loadavg")

    monkeypatch.setattr(os, "getloadavg", unreadable)
    assert machine_load() == 1.0
