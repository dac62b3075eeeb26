-- Pause a provider for every process: the key lives `ms` milliseconds, or longer if a
-- longer pause is already set (a later pause never shortens an earlier one).
-- KEYS 1 pause;  ARGV 1 milliseconds.
-- PTTL answers for a key of any type, and SET replaces a key of any type.  A longer
-- TTL on a key of another type (someone wrote under the prefix) is not a pause of
-- ours: it is replaced too.  The type is asked only then (redis.pcall of STRLEN fails
-- on anything but a string), never on the usual path.
local ms = tonumber(ARGV[1])
local set = redis.call('PTTL', KEYS[1]) < ms
if not set then
  local len = redis.pcall('STRLEN', KEYS[1])
  set = type(len) == 'table' and len.err ~= nil
end
if set then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
