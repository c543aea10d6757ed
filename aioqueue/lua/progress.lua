-- progress: record running jobs' progress reports and publish each, fenced by the lease token
-- (a worker that lost a job's lease can't write over its new holder's reports).
-- KEYS[1] tokens  hash  id -> holder token    KEYS[2] progress  hash  id -> last report
-- ARGV: per job (4 each): id, token, report (an encoded Progress), the job's events channel
-- Returns the number of reports recorded. Writing the same report again changes nothing, so a
-- call re-sent after a lost reply needs no receipt (subscribers may see a report twice).
local n = 0
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[1], id) == ARGV[i + 1] then
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    redis.call('PUBLISH', ARGV[i + 3], ARGV[i + 2])
    n = n + 1
  end
end
return n
