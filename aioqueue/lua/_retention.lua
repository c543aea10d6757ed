-- Dead-letter retention, shared by finish and expired: drop dead letters older than ttl_ms and
-- the oldest beyond cap, at most 100 per call so that a call stays short. Deletions only.
local function trim_dead(dead, jobs, attempts, errors, priority, now, ttl_ms, cap)
  local gone = redis.call('ZRANGEBYSCORE', dead, '-inf', now - ttl_ms, 'LIMIT', 0, 100)
  local over = redis.call('ZCARD', dead) - #gone - cap
  if over > 0 then
    local oldest = redis.call('ZRANGE', dead, #gone, #gone + math.min(over, 100 - #gone) - 1)
    for _, id in ipairs(oldest) do gone[#gone + 1] = id end
  end
  for _, id in ipairs(gone) do
    redis.call('ZREM', dead, id)
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', attempts, id)
    redis.call('HDEL', errors, id)
    redis.call('HDEL', priority, id)
  end
  return #gone
end
