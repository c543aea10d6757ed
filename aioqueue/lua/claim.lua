-- claim: promote due scheduled jobs, then pop up to k ready jobs and lease them, in one step,
-- so that no instant exists at which a popped job is recorded nowhere.
-- KEYS[1] pending    zset   id -> -priority
-- KEYS[2] scheduled  zset   id -> run-at (ms)
-- KEYS[3] priority   hash   id -> priority
-- KEYS[4] jobs       hash   id -> envelope
-- KEYS[5] attempts   hash   id -> attempts started
-- KEYS[6] tokens     hash   id -> holder token of the current lease
-- KEYS[7] leases     zset   id -> lease deadline (ms)
-- KEYS[8] wake       list   wake-up tokens
-- KEYS[9] stats      hash   counters
-- KEYS[10] paused    string exists while the queue is paused
-- KEYS[11] full      string exists while a producer waits for room (see submit.lua)
-- KEYS[12] rated     hash   id -> "key count period_ms" of a rate-limited job
-- KEYS[13] tat       hash   rate key -> its theoretical arrival time (ms, GCRA)
-- KEYS[14] progress  hash   id -> the job's last progress report (see progress.lua)
-- ARGV[1] k (max jobs to claim), ARGV[2] lease_ms, ARGV[3] token prefix, ARGV[4] first token seq,
-- ARGV[5] the done channel, where a claim that made room says so (a message of one byte, 2)
-- It reads only these KEYS and ARGV: what follows them (a receipt's) is left alone.
-- Returns {ms until the next scheduled job or -1, stale ids skipped, 1 if paused else 0, then
--          per claimed job: id, token, attempts, envelope, last progress report or ''}
-- A rate-limited job popped while its key is over its rate (count per period, GCRA: at most
-- count in any period, spaced out after a burst) books the next free moment of the key and
-- goes back to scheduled for it, unleased, its attempt uncounted (marked "=" in `rated`, so
-- that it starts then without counting again); the claim's "ms until the next scheduled job"
-- makes the worker wait for it without polling.
-- While paused, due scheduled jobs are still promoted (they keep their schedule), but nothing is
-- popped and no wake-up token is pushed: a worker told "paused" blocks on the wake list until
-- resume.lua pushes one.
-- `now` (a parameter of the function it runs in, see _sources.py): the time of a finish that ran
-- just before it in the same call, whose first write was a deletion; nil when it runs alone.
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- A deletion first (of nothing): Redis refuses a script at maxmemory only when its first
  -- write may grow memory, and workers must go on draining the queue then.
  redis.call('HDEL', KEYS[6], '')
end
local function next_due()  -- when the first scheduled job is due (ms), or nil
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return first[2] and tonumber(first[2])
end
local nxt = next_due()
local moved = false  -- scheduled changed: its first job is asked again at the end
if nxt and nxt <= now then
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
  for _, id in ipairs(due) do
    local p = tonumber(redis.call('HGET', KEYS[3], id) or '0')
    redis.call('ZADD', KEYS[1], -p, id)
    redis.call('ZREM', KEYS[2], id)
  end
  moved = true
end
local paused = redis.call('EXISTS', KEYS[10])
local out = {-1, 0, paused}
local k = tonumber(ARGV[1])
if paused == 1 then
  k = 0
end
local lease = tonumber(ARGV[2])
local seq = tonumber(ARGV[4])
local stale = 0
local rated = k > 0 and redis.call('EXISTS', KEYS[12]) == 1
local reported = k > 0 and redis.call('EXISTS', KEYS[14]) == 1
if k > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], k)
  for i = 1, #popped, 2 do
    local id = popped[i]
    local env = redis.call('HGET', KEYS[4], id)
    local leased = env and redis.call('ZSCORE', KEYS[7], id)
    local wait = 0
    if env and not leased and rated then
      local spec = redis.call('HGET', KEYS[12], id)
      if spec and string.sub(spec, 1, 1) == '=' then
        redis.call('HSET', KEYS[12], id, string.sub(spec, 2))  -- back at its booked moment
      elseif spec then
        local key, count, period = string.match(spec, '^(.*) (%d+) (%d+)$')
        local gap = tonumber(period) / tonumber(count)
        local tat = math.max(tonumber(redis.call('HGET', KEYS[13], key) or '0'), now)
        if tat - now > tonumber(period) - gap then  -- over the rate: book its moment
          wait = tat - (tonumber(period) - gap) - now
          redis.call('HSET', KEYS[12], id, '=' .. spec)
        end
        redis.call('HSET', KEYS[13], key, tat + gap)
      end
    end
    if wait > 0 then
      redis.call('ZADD', KEYS[2], now + math.ceil(wait), id)  -- back when its rate allows
      moved = true
    elseif env and not leased then
      local attempts = redis.call('HINCRBY', KEYS[5], id, 1)
      local token = ARGV[3] .. seq
      seq = seq + 1
      redis.call('HSET', KEYS[6], id, token)
      redis.call('ZADD', KEYS[7], now + lease, id)
      out[#out + 1] = id
      out[#out + 1] = token
      out[#out + 1] = attempts
      out[#out + 1] = env
      out[#out + 1] = reported and redis.call('HGET', KEYS[14], id) or ''
    else
      -- finished already (a stale copy) or leased by another holder: never start it twice
      stale = stale + 1
    end
  end
  if stale > 0 then
    redis.call('HINCRBY', KEYS[9], 'stale', stale)
  end
  if #popped > 0 and redis.call('DEL', KEYS[11]) == 1 then
    redis.call('PUBLISH', ARGV[5], '\2')  -- room for the producers that wait
  end
end
out[2] = stale
if paused == 0 and redis.call('ZCARD', KEYS[1]) > 0 and redis.call('LLEN', KEYS[8]) == 0 then
  redis.call('RPUSH', KEYS[8], '1')  -- more work: wake the next idle worker
end
if moved then
  nxt = next_due()
end
if nxt then
  out[1] = math.max(0, nxt - now)
end
return out
