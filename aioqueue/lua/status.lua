-- status: where a job is, read in one step (read-only).
-- KEYS[1] leases  KEYS[2] pending  KEYS[3] scheduled  KEYS[4] dead  KEYS[5] result:{id}
-- KEYS[6] jobs
-- ARGV[1] id
-- Returns {state, outcome bytes or false}; state is one of running, pending, scheduled, dead,
-- finished (see the outcome), unknown.
local id = ARGV[1]
if redis.call('ZSCORE', KEYS[1], id) then return {'running', false} end
if redis.call('ZSCORE', KEYS[2], id) then return {'pending', false} end
if redis.call('ZSCORE', KEYS[3], id) then return {'scheduled', false} end
if redis.call('ZSCORE', KEYS[4], id) then return {'dead', false} end
local outcome = redis.call('GET', KEYS[5])
if outcome then return {'finished', outcome} end
if redis.call('HEXISTS', KEYS[6], id) == 1 then return {'pending', false} end
return {'unknown', false}
