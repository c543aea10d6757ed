-- cancel: withdraw jobs that have not started (pending or scheduled); ask the workers holding
-- running ones to stop them (the holder sees the request at its next heartbeat, kills the job's
-- child and records the job as cancelled; recovery does the same for a dead holder's job).
-- KEYS[1] pending  KEYS[2] scheduled  KEYS[3] jobs  KEYS[4] attempts  KEYS[5] priority
-- KEYS[6] errors  KEYS[7] stats  KEYS[8] leases  KEYS[9] cancels  KEYS[10] blocked
-- KEYS[11] gactive  KEYS[12] glimit (see _group.lua)  KEYS[13] wake  KEYS[14] rated
-- KEYS[15] progress (a retried or snoozed job's checkpoint)
-- then per job: KEYS[16 + 3(i-1)] result:{id}, KEYS[17 + 3(i-1)] dedup, KEYS[18 + 3(i-1)] gq
-- ARGV[1] channel, ARGV[2] ttl_ms, then per job: id, outcome bytes, has_dedup, group
-- A job waiting for others (blocked) or for its group's slot is withdrawn like a pending one
-- (its parents' `after` sets keep its id, which the finish script skips); a pending job of a
-- group frees its slot for the group's next job.
-- Returns per job: 1 cancelled (by this call or an earlier one: cancelling is idempotent, so a
-- client that retries a cancel whose reply it lost hears the truth), 2 running and asked to
-- stop, 0 not cancelled (finished otherwise, or unknown).
local out = {}
local done = {}
local ttl = tonumber(ARGV[2])
local woke = false
local n = (#ARGV - 2) / 4
for i = 0, n - 1 do
  local id, outcome, group = ARGV[3 + i * 4], ARGV[4 + i * 4], ARGV[6 + i * 4]
  local rkey, dkey, gqkey = KEYS[16 + 3 * i], KEYS[17 + 3 * i], KEYS[18 + 3 * i]
  local slot = redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
  local waited = redis.call('HDEL', KEYS[10], id)
  if group ~= '' then
    waited = waited + redis.call('LREM', gqkey, 0, id)
  end
  if slot + waited > 0 then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('HDEL', KEYS[6], id)
    redis.call('HDEL', KEYS[14], id)
    redis.call('HDEL', KEYS[15], id)
    redis.call('SET', rkey, outcome, 'PX', ttl)
    if ARGV[5 + i * 4] == '1' then
      redis.call('PEXPIRE', dkey, ttl)
    end
    if slot > 0 and group ~= '' then
      woke = group_done(KEYS[11], KEYS[12], gqkey, group, KEYS[3], KEYS[5], KEYS[1]) or woke
    end
    redis.call('HINCRBY', KEYS[7], 'cancelled', 1)
    done[#done + 1] = id
    done[#done + 1] = outcome
    out[#out + 1] = 1
  elseif redis.call('ZSCORE', KEYS[8], id) then
    if redis.call('HEXISTS', KEYS[9], id) == 0 then
      local t = redis.call('TIME')
      redis.call('HSET', KEYS[9], id, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    end
    out[#out + 1] = 2
  else
    local prev = redis.call('GET', rkey)
    local ok, stored = false, nil
    if prev then
      ok, stored = pcall(cmsgpack.unpack, prev)
    end
    if ok and type(stored) == 'table' and stored['cancelled'] == true then
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
end
if woke and redis.call('LLEN', KEYS[13]) == 0 then
  redis.call('RPUSH', KEYS[13], '1')
end
announce(ARGV[1], done)
return out
