-- Publish this process's breaker news for one provider, then read the record.
-- (breaker_record.lua is prepended.)
-- ARGV 1 process id   2 open for this long (us; 0: no news)   3 its consecutive trips
--      4 probes that close the breaker (half_open_probes)   5 probe token time (us)
--      6 d: probe outcomes, then d pairs (token, '1' success | '0' no verdict)
--      then the probe tokens still held (their expiry is renewed)
-- Returns the record (breaker_record.lua).
local pid, open_us, trips = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local need, ttl, d = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

if open_us > 0 then
  -- A later open never shortens an earlier one that still runs.
  local open_end = now + open_us
  local r = ours('HMGET', KEYS[1], 'state', 'until')
  if r[1] == 'open' and ends(r[2]) > open_end then open_end = ends(r[2]) end
  decide('open', open_end, pid, trips)
end
for i = 1, d do
  local token, ok = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  -- Only a token still there counts: an open in between deleted every token.
  if ours('ZREM', KEYS[2], token) == 1 and ok == '1'
      and ours('HGET', KEYS[1], 'state') == 'open' then
    local n = count(redis.call('HGET', KEYS[1], 'ok')) + 1
    redis.call('HSET', KEYS[1], 'ok', n)
    if n >= need then
      decide('closed', 0, pid, 0)
    end
  end
end
for i = 7 + 2 * d, #ARGV do
  ours('ZADD', KEYS[2], 'XX', now + ttl, ARGV[i])
end
return record()
