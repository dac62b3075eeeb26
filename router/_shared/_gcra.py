"""GCRA, the generic cell rate algorithm: the pure model of ``gcra.lua``.

The shared RPM and TPM limits are GCRA buckets evaluated in Redis (``admit.lua``
prepends ``gcra.lua``).  This is the same step in Python, operation for operation (both
are IEEE doubles), so a test can drive the Lua function and
this one with the same sequence of requests and demand the same decisions.

The algorithm (redis-cell's semantics).  A bucket of ``capacity`` units — the burst —
refilling one unit every ``interval`` microseconds (``interval = 60e6 / limit`` for a
per-minute limit) is stored as one number, its *theoretical arrival time* ``tat``: when
it would be full again.  At ``now`` it holds ``capacity - max(0, tat - now) / interval``
units.  A request of ``cost`` units::

    new_tat = max(tat, now) + cost · interval
    allowed  iff  new_tat - capacity · interval <= now + 1  (then tat := new_tat)
    else     retry_after = ceil(new_tat - capacity · interval - now)

That is the token bucket of :class:`router._limiter.TokenBucket` with ``rate =
1/interval``, stated with one stored number, which is what makes it atomic and cheap in
a Lua script: in any window of length ``W`` it admits at most ``W / interval +
capacity`` units, give or take the one microsecond of slack (which keeps float
rounding in a sum of intervals from taking a unit off a full burst; the scripts count
microseconds from Unix time 1.7e9, so that rounding is at most 1/128 us per addition).
"""

from __future__ import annotations

import math

__all__ = ["gcra"]


def gcra(
    tat: float, now: float, interval: float, capacity: float, cost: float
) -> tuple[bool, float, float]:
    """One GCRA decision: ``(allowed, tat after it, retry_after)`` (microseconds).

    Example::

        >>> gcra(0, 1_000_000, 500_000, 2, 1)      # a full bucket of 2: allowed
        (True, 1500000, 0)
        >>> gcra(2_000_000, 1_000_000, 500_000, 2, 1)  # empty: wait half a second
        (False, 2000000, 500000)
    """
    if tat < now:
        tat = now
    new_tat = tat + cost * interval
    allow_at = new_tat - capacity * interval
    if allow_at <= now + 1:
        return True, new_tat, 0
    return False, tat, math.ceil(allow_at - now)
