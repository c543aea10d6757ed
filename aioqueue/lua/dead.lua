-- dead: the oldest dead letters with their envelopes and errors, in one step (read-only).
-- KEYS[1] dead  KEYS[2] jobs  KEYS[3] errors
-- ARGV[1] limit
-- Returns per job: id, dead-at (ms), envelope or false, error records or false.
local out = {}
local rows = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local id = rows[i]
  out[#out + 1] = id
  out[#out + 1] = rows[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], id)
  out[#out + 1] = redis.call('HGET', KEYS[3], id)
end
return out
