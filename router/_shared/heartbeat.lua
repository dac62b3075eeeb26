-- A process says it is alive; processes silent for longer than the ttl are forgotten.
-- KEYS 1 processes (sorted set: id -> last heartbeat);  ARGV 1 id, 2 ttl (us).
-- Returns the number of live processes (this one included).
-- A key of ours holding another type (someone wrote under the prefix) is replaced, not
-- failed on: failing would switch every process to local limits at each call.
local function own(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= kind and found ~= 'none' then redis.call('DEL', key) end
end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
own(KEYS[1], 'zset')
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000) * 2)
return redis.call('ZCARD', KEYS[1])
