-- submit: add jobs, idempotently. Job ids are made by the submitting client, one per job, so an
-- id that exists already can only be this very call re-sent after a lost reply: it gets the
-- first answer (created) and writes nothing twice.
-- KEYS[1] jobs       hash   id -> envelope
-- KEYS[2] pending    zset   id -> -priority
-- KEYS[3] scheduled  zset   id -> run-at (ms, Redis clock)
-- KEYS[4] priority   hash   id -> priority (only when not 0)
-- KEYS[5] wake       list   wake-up tokens workers block on
-- KEYS[6] full       string exists while a producer waits for room (the next claim clears it)
-- then for job i (0-based): KEYS[7 + 2i] result:{id}, KEYS[8 + 2i] dedup:{key} (any key if none)
-- ARGV[1] most jobs waiting (pending + scheduled) the queue takes; 0: no bound
-- then per job (5 each): id, envelope, priority, delay_ms, has_dedup ("1" or "0")
-- Returns a flat array, per job: the job id that holds the work (the original one on a
-- de-duplication hit), and 1 when it is this call's job, 0 when another job holds the key, -1
-- when the queue is full (nothing written for it; the `full` key asks the next claim to say
-- when there is room).
local out = {}
local woke = false
local now = nil
local bound = tonumber(ARGV[1])
local room = nil
if bound > 0 then
  room = bound - redis.call('ZCARD', KEYS[2]) - redis.call('ZCARD', KEYS[3])
end
local n = (#ARGV - 1) / 5
for i = 0, n - 1 do
  local b = 1 + i * 5
  local id = ARGV[b + 1]
  local prio = tonumber(ARGV[b + 3])
  local delay = tonumber(ARGV[b + 4])
  local rkey = KEYS[7 + 2 * i]
  local dkey = KEYS[8 + 2 * i]
  local other = false
  if ARGV[b + 5] == '1' then
    other = redis.call('GET', dkey)
  end
  if other then
    out[#out + 1] = other
    out[#out + 1] = other == id and 1 or 0
  elseif redis.call('HEXISTS', KEYS[1], id) == 1 or redis.call('EXISTS', rkey) == 1 then
    out[#out + 1] = id  -- this call, re-sent: the job is there (or already finished)
    out[#out + 1] = 1
  elseif room and room <= 0 then
    redis.call('SET', KEYS[6], '1')
    out[#out + 1] = id
    out[#out + 1] = -1
  else
    if room then
      room = room - 1
    end
    redis.call('HSET', KEYS[1], id, ARGV[b + 2])
    if prio ~= 0 then
      redis.call('HSET', KEYS[4], id, prio)
    end
    if delay > 0 then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', KEYS[3], now + delay, id)
    else
      redis.call('ZADD', KEYS[2], -prio, id)
    end
    woke = true
    if ARGV[b + 5] == '1' then
      redis.call('SET', dkey, id)
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if woke and redis.call('LLEN', KEYS[5]) == 0 then
  redis.call('RPUSH', KEYS[5], '1')
end
return out
