-- cancel: withdraw jobs that have not started (pending or scheduled); ask the workers holding
-- running ones to stop them (the holder sees the request at its next heartbeat, kills the job's
-- child and records the job as cancelled; recovery does the same for a dead holder's job).
-- KEYS[1] pending  KEYS[2] scheduled  KEYS[3] jobs  KEYS[4] attempts  KEYS[5] priority
-- KEYS[6] errors  KEYS[7] stats  KEYS[8] leases  KEYS[9] cancels  KEYS[10] blocked
-- then per job: KEYS[11 + 2(i-1)] result:{id}, KEYS[12 + 2(i-1)] dedup
-- A job waiting for others (blocked) is withdrawn like a pending one; its parents' `after`
-- sets keep its id, which the finish script skips.
-- ARGV[1] channel, ARGV[2] ttl_ms, then per job: id, outcome bytes, has_dedup
-- Returns per job: 1 cancelled (by this call or an earlier one: cancelling is idempotent, so a
-- client that retries a cancel whose reply it lost hears the truth), 2 running and asked to
-- stop, 0 not cancelled (finished otherwise, or unknown).
local out = {}
local done = {}
local ttl = tonumber(ARGV[2])
local n = (#ARGV - 2) / 3
for i = 0, n - 1 do
  local id = ARGV[3 + i * 3]
  if redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
      + redis.call('HDEL', KEYS[10], id) > 0 then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('HDEL', KEYS[6], id)
    redis.call('SET', KEYS[11 + 2 * i], ARGV[4 + i * 3], 'PX', ttl)
    if ARGV[5 + i * 3] == '1' then
      redis.call('PEXPIRE', KEYS[12 + 2 * i], ttl)
    end
    redis.call('HINCRBY', KEYS[7], 'cancelled', 1)
    done[#done + 1] = id
    done[#done + 1] = ARGV[4 + i * 3]
    out[#out + 1] = 1
  elseif redis.call('ZSCORE', KEYS[8], id) then
    if redis.call('HEXISTS', KEYS[9], id) == 0 then
      local t = redis.call('TIME')
      redis.call('HSET', KEYS[9], id, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    end
    out[#out + 1] = 2
  else
    local prev = redis.call('GET', KEYS[11 + 2 * i])
    local ok, outcome = false, nil
    if prev then
      ok, outcome = pcall(cmsgpack.unpack, prev)
    end
    if ok and type(outcome) == 'table' and outcome['cancelled'] == true then
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
end
announce(ARGV[1], done)
return out
