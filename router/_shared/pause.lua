-- Pause a provider for every process: the key lives `ms` milliseconds, or longer if a
-- longer pause is already set (a later pause never shortens an earlier one).
-- KEYS 1 pause;  ARGV 1 milliseconds.
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
