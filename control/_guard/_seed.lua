-- KEYS[1] ledger, KEYS[2] reservations; ARGV: spent nanos (from the ledger), ledger ttl, now.
-- A seeded ledger's spend is raised to the ledger's, never lowered. An unseeded one holds
-- only what was settled since its state was lost, the ledger what landed before: their sum
-- counts every call at least once (the larger of the two could miss a call settled after
-- the loss and not landed yet). Either way the day's ledger is then marked as seeded.
local bkey, rkey = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
if redis.call('HEXISTS', bkey, 'g') == 0 then
  redis.call('HINCRBY', bkey, 'spent', ARGV[1])
  adopt(bkey, rkey, tonumber(ARGV[3]), ttl)
  return redis.call('HGET', bkey, 'spent')
end
local cur = tonumber(redis.call('HGET', bkey, 'spent') or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('HSET', bkey, 'spent', ARGV[1]) end
redis.call('EXPIRE', bkey, ttl)
return tostring(math.max(cur, new))
