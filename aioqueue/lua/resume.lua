-- resume: clear a queue's pause flag and wake one worker blocked on the wake list; it claims,
-- and each claim that leaves work behind wakes the next (see claim.lua).
-- KEYS[1] paused  string  exists while the queue is paused
-- KEYS[2] wake    list    wake-up tokens workers block on
-- Returns 1 if the queue was paused, else 0.
-- The first write is a deletion, so that a queue can be resumed at maxmemory.
local was = redis.call('DEL', KEYS[1])
if was == 1 and redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('RPUSH', KEYS[2], '1')
end
return was
