"""The shared limits' statistics: a frozen snapshot (no Redis client needed to name it)."""

from __future__ import annotations

import msgspec

__all__ = ["SharedStatistics"]


class SharedStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of the shared-limits connection.

    Attributes:
        state: ``"shared"`` (Redis decides) or ``"local"`` (the fallback: each limit
            divided by ``processes``).
        reason: why limits are local (``None`` while shared).
        processes: live processes last seen through heartbeats (the fallback's divisor).
        since: trio time of the last switch.
        switches: how many times the state changed.
        failures: Redis operations that failed or timed out.
        process_id: this process's id in Redis.
    """

    state: str
    reason: str | None
    processes: int
    since: float
    switches: int
    failures: int
    process_id: str
