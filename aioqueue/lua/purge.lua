-- purge: delete dead-lettered jobs for good.
-- KEYS[1] dead  KEYS[2] jobs  KEYS[3] attempts  KEYS[4] errors  KEYS[5] priority
-- ARGV: ids
-- Returns the number purged.
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    n = n + 1
  end
end
return n
