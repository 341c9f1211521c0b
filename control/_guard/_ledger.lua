-- KEYS[1] ledger, KEYS[2] reservations; ARGV[1] now. Sweeps, then reads {spent, reserved}.
local bkey, rkey, now = KEYS[1], KEYS[2], tonumber(ARGV[1])
if redis.call('EXISTS', bkey) == 0 then return {'0', '0'} end
sweep(bkey, rkey, now, 100000)
local l = redis.call('HMGET', bkey, 'spent', 'reserved', 'lost')
local reserved = tonumber(l[2]) or 0
if l[3] then
  local lost, lx = string.match(l[3], '^(%d+):(.+)$')
  if now < tonumber(lx) then reserved = reserved + tonumber(lost) end
end
return {l[1] or '0', string.format('%d', reserved)}
