-- pause: set a queue's pause flag, which every claim reads (see claim.lua): workers claim
-- nothing until resume.lua clears it.
-- KEYS[1] paused  string  exists while the queue is paused
-- Returns 1 if the queue was not paused already, else 0.
return redis.call('SET', KEYS[1], '1', 'NX') and 1 or 0
