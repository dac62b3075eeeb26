-- Admission for one provider: releases first, then a FIFO batch of requests, atomically.
-- (gcra.lua is prepended.)  Redis's clock, never a process's: every process agrees.
--
-- KEYS  1 rpm TAT, 2 tpm TAT, 3 leases (sorted set: lease id -> expiry), 4 pause
-- ARGV  1 rpm interval (us per request; 0: no rpm limit)   2 rpm capacity
--       3 tpm interval (us per token; 0: no tpm limit)     4 tpm capacity
--       5 max concurrency (0: none)   6 lease time (us)    7 lease id prefix
--       8 rpm refund (requests)       9 tpm delta (tokens; < 0 refunds, > 0 charges)
--       10 r: leases released, then r lease ids
--       then n: requests to admit, then n costs (tokens)
-- Returns {granted, hold, retry_after_us, now_us}: the first `granted` requests are
-- admitted (lease ids: prefix .. i); hold says what stopped the next one:
-- 0 nothing, 1 pause, 2 concurrency, 3 rpm, 4 tpm, 5 never (a cost over the tpm capacity).
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local rpm_i, rpm_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm_i, tpm_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxc, lease_us, lease_prefix = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local rpm_refund, tpm_delta = tonumber(ARGV[8]), tonumber(ARGV[9])
local r = tonumber(ARGV[10])
local n = tonumber(ARGV[11 + r])

-- A key of ours holding another type (someone wrote under the prefix) is replaced, not
-- failed on: failing would switch every process to local limits at each call.  The
-- guard is the read itself (redis.pcall), not a TYPE call more per key and request.
-- A TAT that is not a finite number ("inf", "nan", "1e300": someone wrote it) is read
-- as missing too: stored back, it would fail the SET below at every call (its PX out of
-- range), or answer a retry Redis cannot send as an integer.
local LATEST = 2^50  -- microseconds, 35 years: no TAT or wait of ours is further
local function load(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' then redis.call('DEL', key) return 0 end
  local tat = tonumber(v)
  if tat == nil or tat ~= tat or tat > now + LATEST then return 0 end  -- full
  return tat
end
local function store(key, tat)
  if tat > now then
    redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  else
    redis.call('DEL', key)
  end
end

local rtat, ttat = 0, 0
if rpm_i > 0 then rtat = load(KEYS[1]) end
if tpm_i > 0 then ttat = load(KEYS[2]) end
-- Releases: the tokens reconciled, the requests refunded, the leases freed.
if rpm_i > 0 and rpm_refund > 0 then
  rtat = math.max(now, math.max(rtat, now) - rpm_refund * rpm_i)
end
if tpm_i > 0 and tpm_delta ~= 0 then
  ttat = math.max(now, math.max(ttat, now) + tpm_delta * tpm_i)
end
-- Leases held (expired ones included: they are dropped only when they would hold a
-- request, below), then those released.
local held = 0
if r > 0 or maxc > 0 then
  held = redis.pcall('ZCARD', KEYS[3])
  if type(held) == 'table' then redis.call('DEL', KEYS[3]) held = 0 end
end
for i = 11, 10 + r, 500 do
  held = held - redis.call('ZREM', KEYS[3], unpack(ARGV, i, math.min(i + 499, 10 + r)))
end

local granted, hold, retry = 0, 0, 0
if n > 0 then
  local pttl = redis.call('PTTL', KEYS[4])
  if pttl > 0 then
    hold, retry = 1, pttl * 1000
  else
    local purged = false
    for i = 1, n do
      local cost = tonumber(ARGV[11 + r + i])
      if maxc > 0 and held >= maxc and not purged then
        -- Full, counting expired leases (a process killed with kill -9): drop them.
        redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
        held = redis.call('ZCARD', KEYS[3])
        purged = true
      end
      if maxc > 0 and held >= maxc then
        local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
        hold, retry = 2, math.max(0, tonumber(first[2]) - now)
        break
      end
      local ok, nr, nt, wait = true, rtat, ttat, 0
      if rpm_i > 0 then
        ok, nr, wait = gcra(rtat, now, rpm_i, rpm_cap, 1)
        if not ok then hold, retry = 3, wait break end
      end
      if tpm_i > 0 then
        if cost > tpm_cap then hold = 5 break end
        ok, nt, wait = gcra(ttat, now, tpm_i, tpm_cap, cost)
        if not ok then hold, retry = 4, wait break end
      end
      rtat, ttat = nr, nt
      if maxc > 0 then
        redis.call('ZADD', KEYS[3], now + lease_us, lease_prefix .. i)
        held = held + 1
      end
      granted = i
    end
  end
end
if rpm_i > 0 then store(KEYS[1], rtat) end
if tpm_i > 0 then store(KEYS[2], ttat) end
if granted > 0 and maxc > 0 then
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease_us / 1000) * 2)
end
-- (A lease scored +inf by someone, a debt past 35 years: a wait Redis can send as an
-- integer — not one that wraps negative and has the mailbox ask again at once, forever.)
return {granted, hold, math.min(retry, LATEST), now}
