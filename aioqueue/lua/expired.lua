-- expired: list leases past their deadline (jobs of dead or cut-off workers), for recovery, and
-- apply dead-letter retention. Writes only deletions: leases of ids that have no job at all,
-- and dead letters past their retention.
-- KEYS[1] leases    zset  id -> lease deadline (ms)
-- KEYS[2] tokens    hash  id -> holder token (worker id .. ':' .. sequence)
-- KEYS[3] attempts  hash  id -> attempts started
-- KEYS[4] jobs      hash  id -> envelope
-- KEYS[5] workers   zset  worker id -> heartbeat deadline (ms)
-- KEYS[6] dead      zset  KEYS[7] errors  KEYS[8] priority
-- ARGV[1] limit, ARGV[2] dead_ttl_ms, ARGV[3] max_dead
-- Returns per expired job: id, token, attempts, envelope, 1 if its holder still heartbeats.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
trim_dead(KEYS[6], KEYS[4], KEYS[3], KEYS[7], KEYS[8], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local env = redis.call('HGET', KEYS[4], id)
  if env then
    local token = redis.call('HGET', KEYS[2], id) or ''
    local holder = string.match(token, '^(.*):%d+$')
    local beat = holder and redis.call('ZSCORE', KEYS[5], holder)
    out[#out + 1] = id
    out[#out + 1] = token
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[3], id) or '0')
    out[#out + 1] = env
    out[#out + 1] = (beat and tonumber(beat) >= now) and 1 or 0
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return out
