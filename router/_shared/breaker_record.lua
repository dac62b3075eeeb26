-- One provider's shared circuit breaker record (prepended to breaker.lua and probe.lua).
-- KEYS 1 the record (a hash: seq, state, until, origin, trips, ok), 2 the half-open
-- probe tokens (a sorted set: token -> expiry).  Times are Redis's, in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The longest open a process publishes (_breaker.py's _LONGEST_OPEN, 1 day, in us).
local LONGEST = 86400000000

-- `cmd` on `key`.  A key of ours holding another type (someone wrote under the prefix)
-- is replaced, not failed on: failing would switch every process to local limits at
-- each call.  redis.pcall, not a TYPE first: a key of the right type costs nothing more.
local function ours(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' then error(r) end
    redis.call('DEL', key)
    r = redis.call(cmd, key, ...)
  end
  return r
end

-- A field as a number; `default` when missing or not a finite number (written over).
local function num(v, default)
  local x = tonumber(v)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return default end
  return x
end

-- A count (seq, trips, ok): 0 when missing, not a number, negative or past 2^53 (a
-- reply's integers must fit, and seq + 1 must be exact).
local function count(v)
  local x = num(v, 0)
  if x < 0 or x >= 9007199254740992 then return 0 end
  return math.floor(x)
end

-- The record's `until` (an end on Redis's clock), never later than the longest open
-- from now: an `until` written over with a huge number does not open a breaker forever.
local function ends(v)
  return math.min(num(v, 0), now + LONGEST)
end

-- Write a decision.  Every write has a new seq, so a process applies each one once:
-- max(seq + 1, now) rather than seq + 1, so a record lost (Redis restarted empty) or
-- replaced (another type, a seq that is not a number) starts above any seq a process
-- has already seen.  Exact: now (~1.8e15 us) is far below 2^53.
local function decide(state, open_end, origin, trips)
  local seq = math.max(count(ours('HGET', KEYS[1], 'seq')) + 1, now)
  redis.call('HSET', KEYS[1], 'seq', string.format('%.0f', seq), 'state', state,
    'until', string.format('%.0f', open_end), 'origin', origin, 'trips', trips, 'ok', 0)
  redis.call('DEL', KEYS[2])
end

-- The record as {seq, open (0|1), remaining_us, origin, trips}.
local function record()
  local r = ours('HMGET', KEYS[1], 'seq', 'state', 'until', 'origin', 'trips')
  local open, remaining = 0, 0
  if r[2] == 'open' then
    open = 1
    remaining = math.max(0, ends(r[3]) - now)
  end
  local origin = r[4]
  if type(origin) ~= 'string' or #origin > 256 then origin = '' end  -- ids are short
  return {count(r[1]), open, remaining, origin, count(r[5])}
end
