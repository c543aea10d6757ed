-- overview: what `aioqueue info` and `aioqueue doctor` show of a queue, in one step (read-only,
-- no scans: every read is O(log n) or bounded, so it answers at once however long the queue).
-- KEYS[1] pending  KEYS[2] scheduled  KEYS[3] leases  KEYS[4] dead  KEYS[5] workers  KEYS[6] stats
-- KEYS[7] paused  KEYS[8] worker_info  KEYS[9] schedules  KEYS[10] blocked
-- ARGV[1] most priority levels to visit for the oldest pending job
-- Returns {now (ms), pending, scheduled, running, dead, {worker id, heartbeat deadline, ...},
--          {counter, value, ...}, {first pending id of each priority level, ...},
--          1 if more levels were left unvisited else 0, leases past their deadline,
--          the earliest lease deadline or false, 1 if the queue is paused else 0,
--          {worker id, "processes in_flight started_ms", ...}, {schedules' fields, values},
--          jobs waiting for others to finish}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Pending is ordered by -priority, then by id (ids start with their creation time), so the
-- oldest pending job is the first of one of the priority levels: visit each level's first.
local heads = {}
local more = 0
local row = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
while #row > 0 do
  if #heads >= tonumber(ARGV[1]) then
    more = 1
    break
  end
  heads[#heads + 1] = row[1]
  row = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. row[2], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
end
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {
  now,
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[6]),
  heads,
  more,
  redis.call('ZCOUNT', KEYS[3], '-inf', '(' .. now),
  first[2] or false,
  redis.call('EXISTS', KEYS[7]),
  redis.call('HGETALL', KEYS[8]),
  redis.call('HGETALL', KEYS[9]),
  redis.call('HLEN', KEYS[10]),
}
