-- outcomes: finished jobs' outcomes, and whether unfinished ones exist, in one step (read-only).
-- KEYS[1] jobs, then per id: KEYS[1 + i] result:{id}
-- ARGV: ids
-- Returns per id: the outcome bytes, or 1 if the job exists unfinished, or 0 if it is unknown.
local out = {}
for i, id in ipairs(ARGV) do
  local outcome = redis.call('GET', KEYS[1 + i])
  if outcome then
    out[i] = outcome
  else
    out[i] = redis.call('HEXISTS', KEYS[1], id)
  end
end
return out
