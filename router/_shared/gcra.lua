-- The generic cell rate algorithm (GCRA), redis-cell's semantics: a pure function.
-- Shared text: every script that needs it starts with this file (router/_shared/_scripts.py).
--
-- A bucket of `capacity` units (the burst) refilling one unit per `interval`
-- microseconds is stored as its theoretical arrival time `tat`: the time at which it
-- would be full again.  It holds `capacity - (tat - now) / interval` units at `now`.
-- A request of `cost` units is allowed when, after it, the bucket would not hold less
-- than nothing (give or take one microsecond, for the rounding of sums of intervals):
--     new_tat = max(tat, now) + cost * interval
--     allowed  iff  new_tat - capacity * interval <= now + 1
-- else it may go at `new_tat - capacity * interval` (retry_after = that - now, rounded
-- up to a microsecond).  Times are microseconds since 2023-11-14 (Unix time 1.7e9):
-- small numbers keep a double's rounding in a sum of intervals far below the slack
-- (1/128 us per addition for a century).  A stored TAT keeps 3 decimals, every digit
-- a double has at those times, so a stored value reads back exactly.
local function gcra(tat, now, interval, capacity, cost)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - capacity * interval
  if allow_at <= now + 1 then
    return true, new_tat, 0
  end
  return false, tat, math.ceil(allow_at - now)
end
