"""Small helpers the tests share."""

from __future__ import annotations

import os
from typing import Any

from providers import ChatRequest, Provider
from providers.testing import Fault, Scenario


async def collect(provider: Provider, request: ChatRequest) -> list[Any]:
    """Every event of one stream, in order."""
    async with provider.stream(request) as events:
        return [event async for event in events]


def one_fault(kind: str, **kw: Any) -> dict[str, Scenario]:
    """A scenario ``"s"`` whose every request gets the fault ``kind``."""
    return {"s": Scenario(faults=[Fault(kind=kind, rate=1.0, **kw)])}  # type: ignore[arg-type]


def machine_load() -> float:
    """How many times over its CPUs the machine is booked now: the 1-minute load average
    per CPU this process may use, at least 1.

    A real-time bound that only a hang should reach (an example's or a command's
    timeout) is multiplied by it: on a loaded 2-core CI machine (load 8: x4) the bound
    stretches with the work queued ahead of ours, and a hang still meets it.
    """
    try:
        load = os.getloadavg()[0]
        cpus = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return 1.0
    return max(1.0, load / max(1, cpus))
