-- Renew a process's leases: each id still held gets a new expiry, now + lease time.
-- KEYS 1 leases;  ARGV 1 lease time (us), then the lease ids.  Returns how many renewed.
-- A key of ours holding another type (someone wrote under the prefix) is replaced, not
-- failed on: failing would switch every process to local limits at each call.
local function own(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= kind and found ~= 'none' then redis.call('DEL', key) end
end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local expiry = now + tonumber(ARGV[1])
own(KEYS[1], 'zset')
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) / 1000) * 2) end
return renewed
