-- finish: record the outcome of leased jobs, fenced by the holder token. One call, many jobs.
-- KEYS[1] jobs  KEYS[2] attempts  KEYS[3] tokens  KEYS[4] leases  KEYS[5] priority
-- KEYS[6] pending  KEYS[7] scheduled  KEYS[8] dead  KEYS[9] errors  KEYS[10] wake  KEYS[11] stats
-- KEYS[12] cancels (id -> when a cancel of the running job was asked, ms)
-- KEYS[13] blocked (id -> parents not finished yet, see submit.lua)
-- KEYS[14] gactive  KEYS[15] glimit (per-key concurrency, see _group.lua)  KEYS[16] rated
-- KEYS[17] progress (id -> last progress report: kept across retries, dropped once done)
-- then for job i (0-based): KEYS[18 + 4i] result:{id}, KEYS[19 + 4i] dedup:{key} (any key if
-- none), KEYS[20 + 4i] after:{id} (the jobs waiting for this one: released once it is done),
-- KEYS[21 + 4i] gq:{group} (any key if none)
-- ARGV[1] pub/sub channel for finished jobs (see _announce.lua), ARGV[2] dead_ttl_ms, ARGV[3] max_dead,
-- ARGV[4] n, the number of jobs
-- then per job (10 each): id, token, kind, result, error, delay_ms, ttl_ms, has_dedup, reaping,
--   group ('' if none)
--   kind: "ok"      store result (TTL), forget the job
--         "retry"   append error, schedule the next attempt after delay_ms
--         "dead"    append error, store the failure as result (TTL), move to the dead letters
--         "release" hand the job back untouched, the attempt uncounted: at once, or after
--                   delay_ms (a snooze)
--         "cancel"  store the cancelled outcome (`result`, TTL), forget the job
--   A "retry" or "release" of a job whose cancel was asked is a "cancel" (its `result` holds
--   the cancelled outcome for that case): a cancelled job never runs again.
--   reaping = "1": the caller recovers an expired lease; act only while it is still expired
-- Returns per job: 1 applied, 0 fenced (the caller no longer holds the job), -1 lease alive
-- (reaping), -2 nothing to recover (reaping: another worker recovered it, or it finished).
-- It reads only its own KEYS (17 + 4n) and ARGV (4 + 10n): what follows them (a receipt's, a
-- claim's, see _sources.py) is left alone.
-- A call re-sent after a lost reply is answered by its receipt (see scripts.py); an outcome
-- re-sent after the receipt expired is still recognised by its bytes and not counted as fenced.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A deletion first (of nothing): Redis refuses a script at maxmemory only when its first write
-- may grow memory, and outcomes must be recorded then too (finishing frees the job's data).
redis.call('HDEL', KEYS[3], '')
local out = {}
local done = {}
local woke = false
local died = false
local completed, failed = 0, 0
local H = 4
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local b = H + i * 10
  local id, token, kind = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local reaping = ARGV[b + 9] == '1'
  local rkey, dkey, akey = KEYS[18 + 4 * i], KEYS[19 + 4 * i], KEYS[20 + 4 * i]
  local group, gqkey = ARGV[b + 10], KEYS[21 + 4 * i]
  local ttl = tonumber(ARGV[b + 7])
  local lease = redis.call('ZSCORE', KEYS[4], id)
  local held = lease and redis.call('HGET', KEYS[3], id) == token
  if held and (kind == 'retry' or kind == 'release') and ARGV[b + 4] ~= ''
      and redis.call('HEXISTS', KEYS[12], id) == 1 then
    kind = 'cancel'
  end
  local again = false
  if not held and not reaping then
    if ARGV[b + 4] ~= '' and redis.call('GET', rkey) == ARGV[b + 4] then
      again = true  -- its outcome is stored: a result, a dead letter's, or a cancel's
    elseif kind == 'retry' then
      local prev = redis.call('HGET', KEYS[9], id)
      local rec = struct.pack('>I4', #ARGV[b + 5]) .. ARGV[b + 5]
      again = prev and string.sub(prev, -#rec) == rec
    end
  end
  if again then
    out[#out + 1] = 1
  elseif not held and reaping then
    out[#out + 1] = -2
  elseif not held then
    redis.call('HINCRBY', KEYS[11], 'fenced', 1)
    out[#out + 1] = 0
  elseif reaping and tonumber(lease) >= now then
    out[#out + 1] = -1
  else
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[12], id)
    if reaping then
      redis.call('HINCRBY', KEYS[11], 'recovered', 1)
    end
    if kind == 'ok' or kind == 'cancel' then
      redis.call('SET', rkey, ARGV[b + 4], 'PX', ttl)
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[5], id)
      redis.call('HDEL', KEYS[9], id)
      if kind == 'ok' then
        redis.call('HINCRBY', KEYS[11], 'completed', 1)
        completed = completed + 1
      else
        redis.call('HINCRBY', KEYS[11], 'cancelled', 1)
      end
      done[#done + 1] = id
      done[#done + 1] = ARGV[b + 4]
    elseif kind == 'release' then
      redis.call('HINCRBY', KEYS[2], id, -1)
      local delay = tonumber(ARGV[b + 6])
      if delay > 0 then
        redis.call('ZADD', KEYS[7], now + delay, id)
        redis.call('HINCRBY', KEYS[11], 'snoozed', 1)
      else
        local p = tonumber(redis.call('HGET', KEYS[5], id) or '0')
        redis.call('ZADD', KEYS[6], -p, id)
        redis.call('HINCRBY', KEYS[11], 'released', 1)
      end
      woke = true
    else
      failed = failed + 1
      local err = ARGV[b + 5]
      local prev = redis.call('HGET', KEYS[9], id) or ''
      redis.call('HSET', KEYS[9], id, prev .. struct.pack('>I4', #err) .. err)
      if kind == 'retry' then
        local delay = tonumber(ARGV[b + 6])
        if delay > 0 then
          redis.call('ZADD', KEYS[7], now + delay, id)
        else
          local p = tonumber(redis.call('HGET', KEYS[5], id) or '0')
          redis.call('ZADD', KEYS[6], -p, id)
        end
        redis.call('HINCRBY', KEYS[11], 'retried', 1)
        woke = true
      else
        redis.call('SET', rkey, ARGV[b + 4], 'PX', ttl)
        redis.call('ZADD', KEYS[8], now, id)
        redis.call('HINCRBY', KEYS[11], 'dead', 1)
        done[#done + 1] = id
        done[#done + 1] = ARGV[b + 4]
        died = true
      end
    end
    if kind ~= 'retry' and kind ~= 'release' then
      if ARGV[b + 8] == '1' then
        redis.call('PEXPIRE', dkey, ttl)
      end
      local kids = redis.call('SMEMBERS', akey)  -- jobs that waited for this one
      for _, kid in ipairs(kids) do
        if redis.call('HEXISTS', KEYS[13], kid) == 1
            and redis.call('HINCRBY', KEYS[13], kid, -1) <= 0 then
          redis.call('HDEL', KEYS[13], kid)
          redis.call('ZADD', KEYS[6], -tonumber(redis.call('HGET', KEYS[5], kid) or '0'), kid)
          woke = true
        end
      end
      if #kids > 0 then
        redis.call('DEL', akey)
      end
      redis.call('HDEL', KEYS[16], id)
      redis.call('HDEL', KEYS[17], id)
      if group ~= '' then
        woke = group_done(KEYS[14], KEYS[15], gqkey, group, KEYS[1], KEYS[5], KEYS[6]) or woke
      end
    end
    out[#out + 1] = 1
  end
end
count_minute(KEYS[11], now, completed, failed)
if died then
  trim_dead(KEYS[8], KEYS[1], KEYS[2], KEYS[9], KEYS[5], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
end
if woke and redis.call('LLEN', KEYS[10]) == 0 then
  redis.call('RPUSH', KEYS[10], '1')
end
announce(ARGV[1], done)
return out, now  -- now: for a claim that follows in the same call
