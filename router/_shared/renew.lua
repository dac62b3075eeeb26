-- Renew a process's leases: each id still held gets a new expiry, now + lease time.
-- KEYS 1 leases;  ARGV 1 lease time (us), then the lease ids.  Returns how many renewed.
-- A key of ours holding another type (someone wrote under the prefix) is replaced, not
-- failed on: failing would switch every process to local limits at each call.  The
-- first command on it runs as redis.pcall, so a key of the right type costs nothing
-- more than the command (no TYPE per call); once replaced, nothing is left to renew.
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local expiry = now + tonumber(ARGV[1])
local renewed = 0
if #ARGV > 1 then
  local first = redis.pcall('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[2])
  if type(first) == 'table' and first.err then
    if string.sub(first.err, 1, 9) ~= 'WRONGTYPE' then error(first) end
    redis.call('DEL', KEYS[1])
    return 0
  end
  renewed = first
end
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) / 1000) * 2) end
return renewed
