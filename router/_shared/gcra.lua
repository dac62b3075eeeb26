-- The generic cell rate algorithm (GCRA), redis-cell's semantics: a pure function.
-- Shared text: every script that needs it starts with this file (router/_shared/_scripts.py).
--
-- A bucket of `capacity` units (the burst) refilling one unit per `interval`
-- microseconds is stored as its theoretical arrival time `tat`: the time at which it
-- would be full again.  It holds `capacity - (tat - now) / interval` units at `now`.
-- A request of `cost` units is allowed when, after it, the bucket would not hold less
-- than nothing:
--     new_tat = max(tat, now) + cost * interval          (rounded up to a microsecond)
--     allowed  iff  new_tat - capacity * interval <= now
-- else it may go at `new_tat - capacity * interval` (retry_after = that - now).
-- Times are whole microseconds (stored as integers, so no digit is lost in a string).
local function gcra(tat, now, interval, capacity, cost)
  if tat < now then tat = now end
  local new_tat = math.ceil(tat + cost * interval)
  local allow_at = new_tat - capacity * interval
  if allow_at <= now then
    return true, new_tat, 0
  end
  return false, tat, math.ceil(allow_at - now)
end
