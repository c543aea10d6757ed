-- submit: add jobs, idempotently. Job ids are made by the submitting client, one per job, so an
-- id that exists already can only be this very call re-sent after a lost reply: it gets the
-- first answer (created) and writes nothing twice.
-- KEYS[1] jobs       hash   id -> envelope
-- KEYS[2] pending    zset   id -> -priority
-- KEYS[3] scheduled  zset   id -> run-at (ms, Redis clock)
-- KEYS[4] priority   hash   id -> priority (only when not 0)
-- KEYS[5] wake       list   wake-up tokens workers block on
-- KEYS[6] full       string exists while a producer waits for room (the next claim clears it)
-- KEYS[7] blocked    hash   id -> parents not finished yet (a job that runs after others)
-- KEYS[8] gactive    hash   group -> slots held   KEYS[9] glimit  hash  group -> limit
-- KEYS[10] rated     hash   id -> "key count period_ms" of a rate-limited job (see claim.lua)
-- then per job: KEYS result:{id}, dedup:{key} (any key if none), and for a job with extras:
--   gq:{group} (any key if none), then per parent: after:{parent} (set of the jobs waiting for
--   it), result:{parent}
-- ARGV[1] most jobs waiting (pending + scheduled) the queue takes; 0: no bound
-- then per job: id, envelope, priority, delay_ms, has_dedup ("1" or "0"), extras: '' for a
--   plain job, else msgpack [group ('' if none), group limit, rate ('' if none, else "key count
--   period_ms"), debounce (true: the job's de-duplication key debounces, see below), [the
--   parents' ids]] (a plain job, the common case, carries no more than it needs)
-- Debounce: while the job holding the key has not started (it is scheduled), a debounced
-- submit with the same key gives it this submit's envelope and moves its start to delay_ms
-- from now, and answers with that job's id; once it started, the submit makes a new job that
-- takes the key over.
-- A job of a group whose slots are all held waits in the group's list (see _group.lua).
-- Returns a flat array, per job: the job id that holds the work (the original one on a
-- de-duplication hit), and 1 when it is this call's job, 0 when another job holds the key, -1
-- when the queue is full (nothing written for it; the `full` key asks the next claim to say
-- when there is room).
-- A job with parents that are not all finished waits in `blocked`, listed in each unfinished
-- parent's `after` set; the finish script releases it to pending when the last one finishes
-- (however it finished: the worker decides then whether it runs). A parent unknown here counts
-- as finished.
local out = {}
local woke = false
local now = nil
local bound = tonumber(ARGV[1])
local room = nil
if bound > 0 then
  room = bound - redis.call('ZCARD', KEYS[2]) - redis.call('ZCARD', KEYS[3])
end
local a, k = 2, 11
while a <= #ARGV do
  local id, env = ARGV[a], ARGV[a + 1]
  local prio = tonumber(ARGV[a + 2])
  local delay = tonumber(ARGV[a + 3])
  local has_dedup = ARGV[a + 4] == '1'
  local extra = ARGV[a + 5]
  local rkey, dkey = KEYS[k], KEYS[k + 1]
  local group, limit, rate, debounce, parents, gqkey = '', 1, '', false, {}, nil
  a, k = a + 6, k + 2
  if extra ~= '' then
    group, limit, rate, debounce, parents = unpack(cmsgpack.unpack(extra))
    gqkey = KEYS[k]
    k = k + 1
  end
  local pk = k
  k = k + 2 * #parents
  local other = false
  if has_dedup then
    other = redis.call('GET', dkey)
  end
  if other and debounce and other ~= id then
    if redis.call('ZSCORE', KEYS[3], other) then  -- not started yet: this submit's arguments,
      if not now then                             -- and its start moved on
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('HSET', KEYS[1], other, env)
      redis.call('ZADD', KEYS[3], now + delay, other)
    else
      other = false  -- started or finished: a new job takes the key over
    end
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
    redis.call('HSET', KEYS[1], id, env)
    if rate ~= '' then
      redis.call('HSET', KEYS[10], id, rate)
    end
    if prio ~= 0 then
      redis.call('HSET', KEYS[4], id, prio)
    end
    local waiting = 0
    for j = 0, #parents - 1 do
      local parent = parents[j + 1]
      local unfinished = redis.call('HEXISTS', KEYS[1], parent) == 1
      if unfinished and redis.call('EXISTS', KEYS[pk + 2 * j + 1]) == 0 then
        redis.call('SADD', KEYS[pk + 2 * j], id)
        waiting = waiting + 1
      end
    end
    local queued = false
    if group ~= '' then
      redis.call('HSET', KEYS[9], group, limit)
      local active = tonumber(redis.call('HGET', KEYS[8], group) or '0')
      if active >= limit or redis.call('LLEN', gqkey) > 0 then
        redis.call('RPUSH', gqkey, id)
        queued = true
      else
        redis.call('HINCRBY', KEYS[8], group, 1)
      end
    end
    if queued then  -- it waits in its group's list until a slot frees
    elseif waiting > 0 then
      redis.call('HSET', KEYS[7], id, waiting)
    elseif delay > 0 then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      redis.call('ZADD', KEYS[3], now + delay, id)
      woke = true
    else
      redis.call('ZADD', KEYS[2], -prio, id)
      woke = true
    end
    if has_dedup then
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
