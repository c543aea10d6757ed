-- Completed and failed attempts per minute, shared by finish: two slots in the stats hash, one
-- for the minute now and one for the minute before (`aioqueue info` shows the one before).
-- Fields: minute:S (the minute slot S holds), completed:S, failed:S, for S = minute % 2.
local function count_minute(stats, now, completed, failed)
  if completed + failed == 0 then
    return
  end
  local minute = math.floor(now / 60000)
  local slot = tostring(minute % 2)
  if redis.call('HGET', stats, 'minute:' .. slot) ~= tostring(minute) then
    redis.call('HSET', stats, 'minute:' .. slot, minute, 'completed:' .. slot, 0, 'failed:' .. slot, 0)
  end
  if completed > 0 then
    redis.call('HINCRBY', stats, 'completed:' .. slot, completed)
  end
  if failed > 0 then
    redis.call('HINCRBY', stats, 'failed:' .. slot, failed)
  end
end
