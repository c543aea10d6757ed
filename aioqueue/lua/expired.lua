-- expired: list leases past their deadline (jobs of dead or cut-off workers), for recovery.
-- Read-mostly: leases of ids that have no job at all are removed here.
-- KEYS[1] leases    zset  id -> lease deadline (ms)
-- KEYS[2] tokens    hash  id -> holder token
-- KEYS[3] attempts  hash  id -> attempts started
-- KEYS[4] jobs      hash  id -> envelope
-- ARGV[1] limit
-- Returns per expired job: id, token, attempts, envelope.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local env = redis.call('HGET', KEYS[4], id)
  if env then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[3], id) or '0')
    out[#out + 1] = env
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return out
