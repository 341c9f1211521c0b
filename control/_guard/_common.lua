-- Shared by the guard's scripts (prepended to each). Amounts are integer nano-dollars.
--
-- A day's ledger hash <tag>:b:<day> holds
--   spent     settled spend
--   reserved  reservations in flight (their members are in <tag>:r:<day>)
--   g         the seeding marker: written only when the day's spend was seeded (from the
--             ledger's rollups, or adopted as the only record when there is none). A hash
--             without it was created by a settlement after a loss, or not at all.
--   rx        the latest expiry of a reservation booked (rounded up to the minute)
--   lost      '<nanos>:<until>': reservations whose set was evicted on its own, counted
--             until then

-- Drops reservations whose expiry has passed (their process died). Returns the nanos freed
-- and whether the reservations' set exists (read from the earliest member, which the sweep
-- needs anyway: a lost set costs no extra call to notice).
local function sweep(bkey, rkey, now, limit)
  local first = redis.call('ZRANGE', rkey, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0, false end
  if tonumber(first[2]) > now then return 0, true end
  local expired = redis.call('ZRANGEBYSCORE', rkey, '-inf', now, 'LIMIT', 0, limit)
  local freed = 0
  for _, old in ipairs(expired) do
    if redis.call('ZREM', rkey, old) == 1 then
      freed = freed + tonumber(string.match(old, ':(%d+)$'))
    end
  end
  if freed > 0 then redis.call('HINCRBY', bkey, 'reserved', -freed) end
  return freed, true
end

-- Marks the day's ledger as seeded. Its reservations total is rebuilt from the set, which may
-- have survived the hash: settlements and sweeps of those reservations then stay exact.
local function adopt(bkey, rkey, now, ttl)
  redis.call('ZREMRANGEBYSCORE', rkey, '-inf', now)
  local total, rx = 0, 0
  local members = redis.call('ZRANGE', rkey, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    total = total + tonumber(string.match(members[i], ':(%d+)$'))
    rx = math.max(rx, tonumber(members[i + 1]))
  end
  redis.call('HSET', bkey, 'reserved', string.format('%d', total), 'g', tostring(now),
             'rx', tostring(math.ceil(rx / 60) * 60))
  redis.call('HDEL', bkey, 'lost')
  redis.call('EXPIRE', bkey, ttl)
end
