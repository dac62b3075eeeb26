-- Take a half-open probe token for one provider, cluster-wide (breaker_record.lua is
-- prepended).  At most `probes` tokens plus the probes that already succeeded, and none
-- while the record says open -- unless the open is the asking process's own: its
-- breaker timed it, and Redis's copy ends a round trip later.  Expired tokens (a
-- crashed process's) are dropped first.
-- ARGV 1 token   2 probes (half_open_probes)   3 token time (us)   4 process id
-- Returns {granted (0|1), then the record}.
local r = ours('HMGET', KEYS[1], 'state', 'until', 'ok', 'origin')
local granted = 0
if not (r[1] == 'open' and num(r[2], 0) > now and r[4] ~= ARGV[4]) then
  ours('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local ok = 0
  if r[1] == 'open' then ok = count(r[3]) end
  if redis.call('ZCARD', KEYS[2]) + ok < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
    redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[3]) / 1000) * 2)
    granted = 1
  end
end
local rec = record()
return {granted, rec[1], rec[2], rec[3], rec[4], rec[5]}
