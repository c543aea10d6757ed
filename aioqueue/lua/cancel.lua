-- cancel: withdraw jobs that have not started (pending or scheduled); running ones are left be.
-- KEYS[1] pending  KEYS[2] scheduled  KEYS[3] jobs  KEYS[4] attempts  KEYS[5] priority
-- KEYS[6] errors  KEYS[7] stats  then per job: KEYS[8 + 2(i-1)] result:{id}, KEYS[9 + 2(i-1)] dedup
-- ARGV[1] channel, ARGV[2] ttl_ms, then per job: id, outcome bytes, has_dedup
-- Returns per job: 1 cancelled (by this call or an earlier one: cancelling is idempotent, so a
-- client that retries a cancel whose reply it lost hears the truth), 0 not cancelled (running,
-- finished otherwise, or unknown).
local out = {}
local done = {}
local ttl = tonumber(ARGV[2])
local n = (#ARGV - 2) / 3
for i = 0, n - 1 do
  local id = ARGV[3 + i * 3]
  if redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id) > 0 then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('HDEL', KEYS[6], id)
    redis.call('SET', KEYS[8 + 2 * i], ARGV[4 + i * 3], 'PX', ttl)
    if ARGV[5 + i * 3] == '1' then
      redis.call('PEXPIRE', KEYS[9 + 2 * i], ttl)
    end
    redis.call('HINCRBY', KEYS[7], 'cancelled', 1)
    done[#done + 1] = id
    done[#done + 1] = ARGV[4 + i * 3]
    out[#out + 1] = 1
  else
    local prev = redis.call('GET', KEYS[8 + 2 * i])
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
