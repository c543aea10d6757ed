-- info: a queue's counts, its workers by heartbeat deadline, and its counters, in one step
-- (read-only).
-- KEYS[1] pending  KEYS[2] scheduled  KEYS[3] leases  KEYS[4] dead  KEYS[5] workers  KEYS[6] stats
-- Returns {pending, scheduled, running, dead, {live worker ids}, {gone worker ids},
--          {counter, value, ...}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('ZRANGEBYSCORE', KEYS[5], now, '+inf'),
  redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. now),
  redis.call('HGETALL', KEYS[6]),
}
