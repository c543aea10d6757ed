-- heartbeat: extend the leases this worker still holds; report the ones it lost, and the ones
-- a producer asked to cancel (the worker kills their children and records them cancelled).
-- KEYS[1] leases  zset  id -> lease deadline (ms)
-- KEYS[2] tokens  hash  id -> holder token
-- KEYS[3] workers zset  worker id -> heartbeat deadline (ms)
-- KEYS[4] worker_info hash  worker id -> "processes in_flight started_ms" (for `aioqueue info`)
-- KEYS[5] cancels hash  id -> when a cancel of the running job was asked (ms)
-- ARGV[1] worker id, ARGV[2] lease_ms, ARGV[3] the worker's info, then pairs: id, token
-- Returns {ids whose lease this worker no longer holds, held ids asked to be cancelled}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[2])
-- A deletion first (of nothing): Redis refuses a script at maxmemory only when its first write
-- may grow memory, and leases must be kept alive then too.
redis.call('HDEL', KEYS[4], '')
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - 60000, 'LIMIT', 0, 100)
for _, w in ipairs(gone) do  -- workers gone a minute
  redis.call('ZREM', KEYS[3], w)
  redis.call('HDEL', KEYS[4], w)
end
redis.call('ZADD', KEYS[3], deadline, ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
local lost, stop = {}, {}
local asked = redis.call('EXISTS', KEYS[5]) == 1
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    if asked and redis.call('HEXISTS', KEYS[5], id) == 1 then
      stop[#stop + 1] = id
    end
  else
    lost[#lost + 1] = id
  end
end
return {lost, stop}
