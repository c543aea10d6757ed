-- requeue: move dead-lettered jobs back to pending with a fresh attempt count.
-- KEYS[1] dead  KEYS[2] attempts  KEYS[3] errors  KEYS[4] pending  KEYS[5] priority
-- KEYS[6] wake  KEYS[7] jobs  then per job: KEYS[8 + i] result:{id}
-- ARGV: ids
-- Returns per id: 1 requeued, 0 not in the dead letters.
local out = {}
for i, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HEXISTS', KEYS[7], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('DEL', KEYS[7 + i])
    local p = tonumber(redis.call('HGET', KEYS[5], id) or '0')
    redis.call('ZADD', KEYS[4], -p, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if redis.call('ZCARD', KEYS[4]) > 0 and redis.call('LLEN', KEYS[6]) == 0 then
  redis.call('RPUSH', KEYS[6], '1')
end
return out
