-- Queued settlements, then (optionally) one admit. Every key is of ONE hash tag (one
-- (tenant, context, purpose)): the script runs in one Redis Cluster slot.
-- KEYS: 3 per settlement (bucket, ledger, reservations), then 3 for the admit.
-- ARGV[1] = n settlements; then 6 per settlement: ticket id, charge nanos (-1: no ledger),
-- token delta, token capacity, reserved nanos, ledger ttl; then, for an admit: now, tokens
-- to take, longest wait, need nanos, ticket id, reservation expiry, ledger ttl, budget mode
-- ('0' none, '1' the ledger must be seeded, '2' adopt an unseeded ledger: Redis is the only
-- record), cap nanos, request capacity, request rate/s, token capacity, token rate/s,
-- bucket ttl ms. Replies {0} (settlements only), {0, wait, spent, reserved} (admitted),
-- {1, wait, bucket} (rate limited), {2, spent, reserved} (budget exceeded) or {3} (the
-- day's ledger is not seeded: re-seed it from the ledger, then admit again).
-- Day keys get their EXPIRE when created: their expiry (the day's end plus the grace) is the
-- same whenever it is computed, so busy keys are not re-expired on every call. A token
-- correction for the admit's own bucket is folded into the admit's one read and write of it.
local n = tonumber(ARGV[1])
local k = 3 * n
local a = 2 + 6 * n
local admit = #ARGV >= a
local rlkey = KEYS[k + 1]
local req_rate, tok_rate = 0, 0
if admit then req_rate, tok_rate = tonumber(ARGV[a + 10]), tonumber(ARGV[a + 12]) end
local limited = req_rate > 0 or tok_rate > 0
local rl, rt, tl, tt, has_tl
local loaded, dirty = false, false
local function load()
  if loaded then return end
  loaded = true
  local b = redis.call('HMGET', rlkey, 'rl', 'rt', 'tl', 'tt')
  rl, rt, tt = tonumber(b[1]), tonumber(b[2]), tonumber(b[4])
  tl = tonumber(b[3])
  has_tl = tl ~= nil
end
-- A refused admit takes nothing, but keeps the settlements' token corrections.
local function save()
  if dirty then redis.call('HSET', rlkey, 'tl', tostring(tl), 'tt', tostring(tt)) end
end
local s = 2
for i = 0, n - 1 do
  local rlk, bkey, rkey = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local charge, delta = tonumber(ARGV[s + 1]), tonumber(ARGV[s + 2])
  if charge >= 0 then
    local held = tonumber(ARGV[s + 4])
    if redis.call('ZREM', rkey, ARGV[s] .. ':' .. ARGV[s + 4]) == 1
       and redis.call('HINCRBY', bkey, 'reserved', -held) == -held then
      redis.call('EXPIRE', bkey, tonumber(ARGV[s + 5]))
    end
    if charge > 0 and redis.call('HINCRBY', bkey, 'spent', charge) == charge then
      redis.call('EXPIRE', bkey, tonumber(ARGV[s + 5]))
    end
  end
  if delta ~= 0 then
    if limited and rlk == rlkey then
      load()
      if has_tl then
        tl = math.min(tonumber(ARGV[s + 3]), tl - delta)
        dirty = true
      end
    else
      local old = redis.call('HGET', rlk, 'tl')
      if old then
        redis.call('HSET', rlk, 'tl',
                   tostring(math.min(tonumber(ARGV[s + 3]), tonumber(old) - delta)))
      end
    end
  end
  s = s + 6
end
if not admit then return {0} end
local bkey, rkey = KEYS[k + 2], KEYS[k + 3]
local now, take, wait_max = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
local req_cap, tok_cap = tonumber(ARGV[a + 9]), tonumber(ARGV[a + 11])
local wait, short = 0, ''
if limited then
  load()
  rl = rl or req_cap
  rt = rt or now
  tl = tl or tok_cap
  tt = tt or now
  if req_rate > 0 then
    if now > rt then rl = math.min(req_cap, rl + (now - rt) * req_rate); rt = now end
    if rl < 1 then wait = (1 - rl) / req_rate; short = 'requests' end
  end
  if tok_rate > 0 then
    if now > tt then tl = math.min(tok_cap, tl + (now - tt) * tok_rate); tt = now end
    if tl < take then
      local w = (take - tl) / tok_rate
      if w > wait then wait = w; short = 'tokens' end
    end
  end
  if wait > wait_max then
    save()
    return {1, tostring(wait), short}
  end
end
local spent, reserved = 0, 0
local mode = ARGV[a + 7]
if mode ~= '0' then
  local need, cap = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 8])
  local ttl = tonumber(ARGV[a + 6])
  local l = redis.call('HMGET', bkey, 'g', 'spent', 'reserved', 'rx', 'lost')
  if not l[1] then
    -- Never seeded, or lost (a restart without persistence, a flush, an eviction): not
    -- trusted. Nothing is taken until the day's spend is restored.
    if mode == '1' then
      save()
      return {3}
    end
    adopt(bkey, rkey, now, ttl)
    l = redis.call('HMGET', bkey, 'g', 'spent', 'reserved', 'rx', 'lost')
  end
  spent = tonumber(l[2]) or 0
  local booked = tonumber(l[3]) or 0
  local freed, listed = 0, true
  -- Nothing booked, nothing to sweep (a seeded ledger's total matches its set).
  if booked ~= 0 then freed, listed = sweep(bkey, rkey, now, 64) end
  booked = booked - freed
  local lost, lx
  if l[5] then
    lost, lx = string.match(l[5], '^(%d+):(.+)$')
    lost, lx = tonumber(lost), tonumber(lx)
  end
  if booked > 0 and not listed then
    -- The reservations' set was evicted on its own: what it held stays counted (stricter)
    -- until every reservation it could hold has expired.
    lost = (lost or 0) + booked
    lx = math.max(tonumber(l[4]) or 0, lx or 0)
    redis.call('HSET', bkey, 'reserved', '0',
               'lost', string.format('%d', lost) .. ':' .. tostring(lx))
    booked = 0
  end
  reserved = booked
  if lost then
    if now >= lx then redis.call('HDEL', bkey, 'lost') else reserved = booked + lost end
  end
  if spent + reserved + need > cap then
    save()
    return {2, spent, reserved}
  end
  redis.call('HINCRBY', bkey, 'reserved', need)
  redis.call('ZADD', rkey, ARGV[a + 5], ARGV[a + 4] .. ':' .. ARGV[a + 3])
  if booked == 0 then redis.call('EXPIRE', rkey, ttl) end
  local expiry = tonumber(ARGV[a + 5])
  if expiry > (tonumber(l[4]) or 0) then
    redis.call('HSET', bkey, 'rx', tostring(math.ceil(expiry / 60) * 60))
  end
end
if limited then
  if req_rate > 0 then rl = rl - 1 end
  if tok_rate > 0 then tl = tl - take end
  redis.call('HSET', rlkey, 'rl', tostring(rl), 'rt', tostring(rt),
             'tl', tostring(tl), 'tt', tostring(tt))
  redis.call('PEXPIRE', rlkey, tonumber(ARGV[a + 13]))
end
return {0, tostring(wait), spent, reserved}
