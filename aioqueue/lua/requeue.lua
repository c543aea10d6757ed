-- requeue: move dead-lettered jobs back to pending with a fresh attempt count, keeping their
-- error records (new attempts' errors are appended after them); a job's de-duplication key
-- holds it again, with no expiry, while it waits and runs.
-- KEYS[1] dead  KEYS[2] attempts  KEYS[3] errors  KEYS[4] pending  KEYS[5] priority
-- KEYS[6] wake  KEYS[7] jobs  then per job i (0-based): KEYS[8 + 2i] result:{id},
-- KEYS[9 + 2i] dedup:{key} (any key if none)
-- ARGV per job (2 each): id, has_dedup
-- Returns per id: 1 requeued, 0 not in the dead letters.
local out = {}
for i = 0, #ARGV / 2 - 1 do
  local id = ARGV[1 + 2 * i]
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HEXISTS', KEYS[7], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('DEL', KEYS[8 + 2 * i])
    if ARGV[2 + 2 * i] == '1' then
      local dkey = KEYS[9 + 2 * i]
      local holder = redis.call('GET', dkey)
      if holder == id then
        redis.call('PERSIST', dkey)
      elseif not holder then
        redis.call('SET', dkey, id)
      end
    end
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
