-- job_info: everything known about one job, in one step (read-only).
-- KEYS[1] jobs  KEYS[2] attempts  KEYS[3] tokens  KEYS[4] leases  KEYS[5] pending
-- KEYS[6] scheduled  KEYS[7] dead  KEYS[8] errors  KEYS[9] priority  KEYS[10] result:{id}
-- KEYS[11] progress
-- ARGV[1] id
-- Returns {now (ms), state, envelope or false, attempts or false, holder token or false,
--          lease deadline or false, run-at (scheduled) or false, dead-at or false,
--          error records or false, outcome or false, last progress report or false}; state is one of running, pending,
--          scheduled, dead, finished (see the outcome), unknown.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local lease = redis.call('ZSCORE', KEYS[4], id)
local run_at = redis.call('ZSCORE', KEYS[6], id)
local dead_at = redis.call('ZSCORE', KEYS[7], id)
local outcome = redis.call('GET', KEYS[10])
local env = redis.call('HGET', KEYS[1], id)
local state = 'unknown'
if lease then
  state = 'running'
elseif redis.call('ZSCORE', KEYS[5], id) then
  state = 'pending'
elseif run_at then
  state = 'scheduled'
elseif dead_at then
  state = 'dead'
elseif outcome then
  state = 'finished'
elseif env then
  state = 'pending'
end
return {
  now,
  state,
  env or false,
  redis.call('HGET', KEYS[2], id) or false,
  redis.call('HGET', KEYS[3], id) or false,
  lease or false,
  run_at or false,
  dead_at or false,
  redis.call('HGET', KEYS[8], id) or false,
  outcome or false,
  redis.call('HGET', KEYS[11], id) or false,
}
