-- Spend budgets shared by every process: changes applied, then a FIFO batch of
-- reservations, each all-or-nothing over its caps; one round trip, atomically.
-- KEYS  one hash per cap: w (the window), s (spent in it), r:<pid> (reserved by that
--       process), h:<pid> (Redis time of that process's last news)
-- ARGV  1 process id   2 ttl (us): a process silent this long has its reservations
--       dropped (it died)
--       then 5 per key: limit ($), period (us), dr ($ reserved: a change, or with
--       absolute = 1 this process's whole reservation), ds ($ spent), absolute (0|1)
--       then m: reservations, then for each: k, k key indexes (1-based), the estimate
-- Windows are Redis's: window = floor(now / period), so every process agrees on them;
-- a new window starts with nothing spent, and reservations carry over.  A reservation
-- fits when spent + reserved (every live process's) + estimate <= limit for each of its
-- caps.
-- Each hash has a generation, g: the Redis time it was made at.  A key found holding
-- another type (someone wrote under the prefix) is replaced by an empty hash, not failed
-- on (failing would switch every process to local limits at each call), and a field
-- that is not a number counts as missing; a hash made again (replaced, deleted, Redis
-- restarted empty) has a new g, so every process sees that what it wrote there is gone
-- and writes its whole reservation again.
-- Returns {m results (0: reserved; i: refused by key i), then 4 per key: spent,
-- reserved, microseconds until the window ends, generation} (dollars as strings, no
-- digit lost).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- A field as a non-negative number; 0 when missing or not a finite number.
local function num(v)
  local x = tonumber(v)
  if x == nil or x ~= x or x == math.huge or x < 0 then return 0 end
  return x
end
local pid, ttl = ARGV[1], tonumber(ARGV[2])
local rk, hk = 'r:' .. pid, 'h:' .. pid
local n = #KEYS

local spent, reserved, ends, limit, mine, gen = {}, {}, {}, {}, {}, {}
for i = 1, n do
  local key, base = KEYS[i], 2 + 5 * (i - 1)
  local period = tonumber(ARGV[base + 2])
  limit[i] = tonumber(ARGV[base + 1])
  local window = math.floor(now / period)
  ends[i] = (window + 1) * period - now
  -- redis.pcall, not a TYPE first: a key of the right type costs nothing more.
  local all = redis.pcall('HGETALL', key)
  if all.err then
    if string.sub(all.err, 1, 9) ~= 'WRONGTYPE' then error(all) end
    redis.call('DEL', key)
    all = {}
  end
  local fields = {}
  for j = 1, #all, 2 do fields[all[j]] = all[j + 1] end
  gen[i] = fields['g']
  if gen[i] == nil or #gen[i] > 32 then
    gen[i] = string.format('%.0f', now)
    redis.call('HSET', key, 'g', gen[i])
  end
  local s = num(fields['s'])
  if tonumber(fields['w']) ~= window then
    s = 0
    redis.call('HSET', key, 'w', string.format('%.0f', window), 's', '0')
  end
  for f, v in pairs(fields) do
    if string.sub(f, 1, 2) == 'h:' and now - num(v) > ttl then
      local who = string.sub(f, 3)
      redis.call('HDEL', key, f, 'r:' .. who)
      fields['r:' .. who] = nil
    end
  end
  local r = 0
  for f, v in pairs(fields) do
    if string.sub(f, 1, 2) == 'r:' then r = r + num(v) end
  end
  -- This process's changes.
  local old = num(fields[rk])
  local dr, ds = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local new = dr
  if ARGV[base + 5] ~= '1' then new = old + dr end
  if new < 1e-12 then new = 0 end
  r = r - old + new
  if ds ~= 0 then
    s = s + ds
    redis.call('HSET', key, 's', string.format('%.17g', s))
  end
  spent[i], reserved[i], mine[i] = s, r, new
end

-- The reservations, in order.
local out = {}
local m = tonumber(ARGV[3 + 5 * n])
local at = 4 + 5 * n
for _ = 1, m do
  local k = tonumber(ARGV[at])
  local estimate = tonumber(ARGV[at + k + 1])
  local refused = 0
  for j = 1, k do
    local i = tonumber(ARGV[at + j])
    if spent[i] + reserved[i] + estimate > limit[i] + 1e-12 then
      refused = i
      break
    end
  end
  if refused == 0 then
    for j = 1, k do
      local i = tonumber(ARGV[at + j])
      reserved[i] = reserved[i] + estimate
      mine[i] = mine[i] + estimate
    end
  end
  out[#out + 1] = refused
  at = at + k + 2
end

for i = 1, n do
  if mine[i] > 0 then
    redis.call('HSET', KEYS[i], rk, string.format('%.17g', mine[i]), hk, string.format('%.0f', now))
  else
    redis.call('HDEL', KEYS[i], rk, hk)
  end
  out[#out + 1] = string.format('%.17g', spent[i])
  out[#out + 1] = string.format('%.17g', math.max(0, reserved[i]))
  out[#out + 1] = string.format('%.0f', ends[i])
  out[#out + 1] = gen[i]
end
return out
