-- The finish announcement, shared by finish and cancel: one PUBLISH on the queue's done channel.
-- `done` is {id, outcome, id, outcome, ...}; the message is a version byte 1, then per job: the
-- id's length (1 byte), the id, the outcome's length (4 bytes, big-endian) and the outcome. An
-- outcome of up to 4 kB travels in the message, so a waiting producer needs no second read; a
-- larger one is sent with length 0 (the producer reads it by id). See results.py.
local function announce(channel, done)
  if #done == 0 then
    return
  end
  local parts = {'\1'}
  for i = 1, #done, 2 do
    local out = done[i + 1]
    if #out > 4096 then
      out = ''
    end
    parts[#parts + 1] = struct.pack('>B', #done[i]) .. done[i] .. struct.pack('>I4', #out) .. out
  end
  redis.call('PUBLISH', channel, table.concat(parts))
end
