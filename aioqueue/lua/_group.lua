-- Per-key concurrency, shared by submit, finish and cancel. A job of a group (options(group=,
-- group_limit=)) holds one of its group's `limit` slots from the moment it is let into pending
-- until it is done (finished, dead-lettered or cancelled: retries keep the slot); beyond the
-- limit its jobs wait in the group's list `gq:{group}`, in submit order, outside pending, and
-- the end of a job lets the next one in. `gactive` counts the slots held per group, `glimit`
-- holds each group's limit (the last submit's).
local function group_done(gactive, glimit, gq, group, jobs, priority, pending)
  local active = redis.call('HINCRBY', gactive, group, -1)
  local limit = tonumber(redis.call('HGET', glimit, group) or '1')
  local woke = false
  while active < limit do
    local nxt = redis.call('LPOP', gq)
    if not nxt then
      break
    end
    if redis.call('HEXISTS', jobs, nxt) == 1 then
      active = redis.call('HINCRBY', gactive, group, 1)
      redis.call('ZADD', pending, -tonumber(redis.call('HGET', priority, nxt) or '0'), nxt)
      woke = true
    end
  end
  if active <= 0 then
    redis.call('HDEL', gactive, group)
    if redis.call('LLEN', gq) == 0 then
      redis.call('HDEL', glimit, group)
    end
  end
  return woke
end
