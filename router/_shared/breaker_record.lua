-- One provider's shared circuit breaker record (prepended to breaker.lua and probe.lua).
-- KEYS 1 the record (a hash: seq, state, until, origin, trips, ok), 2 the half-open
-- probe tokens (a sorted set: token -> expiry).  Times are Redis's, in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Write a decision: every write has a new seq, so a process applies each one once.
local function decide(state, open_end, origin, trips)
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('HSET', KEYS[1], 'state', state, 'until', string.format('%.0f', open_end),
    'origin', origin, 'trips', trips, 'ok', 0)
  redis.call('DEL', KEYS[2])
end

-- The record as {seq, open (0|1), remaining_us, origin, trips}.
local function record()
  local r = redis.call('HMGET', KEYS[1], 'seq', 'state', 'until', 'origin', 'trips')
  local open, remaining = 0, 0
  if r[2] == 'open' then
    open = 1
    remaining = math.max(0, tonumber(r[3]) - now)
  end
  return {tonumber(r[1] or '0'), open, remaining, r[4] or '', tonumber(r[5] or '0')}
end
