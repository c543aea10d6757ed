-- tick: fire one tick of a schedule: record it and submit its job in one step, once in all.
-- Composed after submit.lua (see scripts.py): run_submit is the submit script.
-- KEYS[1] schedules  hash  name -> the last tick fired (ms), then submit's KEYS (none when
-- only recording a tick: missed ticks skipped, a new schedule's start)
-- ARGV[1] schedule name, ARGV[2] tick (ms), then submit's ARGV
-- Returns false when this tick or a later one was fired already by another call, else
-- submit's reply (1 when only recording). The job's id is kept as `name:job`, so that this
-- very call, re-sent after a lost reply, gets its first answer.
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if last >= tonumber(ARGV[2]) then
  if last == tonumber(ARGV[2]) and #ARGV > 2
      and redis.call('HGET', KEYS[1], ARGV[1] .. ':job') == ARGV[3] then
    return {ARGV[3], 1}
  end
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if #ARGV == 2 then
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1] .. ':job', ARGV[3])
local k, a = {}, {}
for i = 2, #KEYS do k[#k + 1] = KEYS[i] end
a[1] = '0'  -- a schedule's tick is submitted whatever the queue's bound
for i = 3, #ARGV do a[#a + 1] = ARGV[i] end
return run_submit(k, a)
