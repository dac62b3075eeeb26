"""Small helpers the adapter tests share."""

from __future__ import annotations

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
