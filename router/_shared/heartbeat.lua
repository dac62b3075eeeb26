-- A process says it is alive; processes silent for longer than the ttl are forgotten.
-- KEYS 1 processes (sorted set: id -> last heartbeat);  ARGV 1 id, 2 ttl (us).
-- Returns the number of live processes (this one included).
-- A key of ours holding another type (someone wrote under the prefix) is replaced, not
-- failed on: failing would switch every process to local limits at each call.  The
-- first command on it runs as redis.pcall, so a key of the right type costs nothing
-- more than the command (no TYPE per call).
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local added = redis.pcall('ZADD', KEYS[1], now, ARGV[1])
if type(added) == 'table' and added.err then
  if string.sub(added.err, 1, 9) ~= 'WRONGTYPE' then error(added) end
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000) * 2)
return redis.call('ZCARD', KEYS[1])
