-- queue_metrics: what a metrics scrape reads, in one step (read-only): the counts by state and
-- the first job of each priority level in the pending queue, the oldest of its level (ids sort
-- by creation time within a level, and the level's first entry is its smallest id).
-- KEYS[1] pending  KEYS[2] scheduled  KEYS[3] leases  KEYS[4] dead
-- ARGV[1] most priority levels to look at (each look is one O(log n) range read)
-- Returns {pending, scheduled, running, dead, Redis time (ms), first id of each level...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  now,
}
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local levels = tonumber(ARGV[1])
while #head > 0 and levels > 0 do
  out[#out + 1] = head[1]
  levels = levels - 1
  head = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. head[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
end
return out
