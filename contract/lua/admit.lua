-- admit.lua: SUMMARIZE_MAX_QUEUED bounds the unfinished jobs of every batch together. A submit asks for
-- room for its next chunk; submits waiting are let in one chunk at a time, by priority then by how long
-- they waited, so a small urgent batch is not stuck behind a ten-million-article one. The room let in
-- is held (`admitted`) until create.lua stores the chunk, or for a minute if the submit died.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] submit: this submit's id
-- ARGV[3] jobs: the chunk's size
-- ARGV[4] max: SUMMARIZE_MAX_QUEUED
-- ARGV[5] step: the batch's priority step (lower goes first)
--
-- Returns ADMIT_REPLY (contract/schema.py): admitted 1 when let in (and nothing else), else 0 with the
-- backlog and the position in line (0 = next).
local id, n, max, step = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local HOLD_MS, STALE_MS = 60000, 10000
-- Held room of submits that died before storing their chunk is let go.
local held = 0
local all = redis.call('HGETALL', L.admitted)
for i = 1, #all, 2 do
  local jobs, until_ms = string.match(all[i + 1], '^(%d+):(%d+)$')
  if not until_ms or tonumber(until_ms) < now then redis.call('HDEL', L.admitted, all[i])
  else held = held + tonumber(jobs) end
end
-- A waiter is seen again each time it asks; one not seen for a while has gone.
redis.call('ZADD', L.admission, 'NX', step * 1e13 + now, id)
redis.call('HSET', L.admission_seen, id, now)
local head = unpack(redis.call('ZRANGE', L.admission, 0, 0))
while head and head ~= id and tonumber(redis.call('HGET', L.admission_seen, head) or '0') < now - STALE_MS do
  redis.call('ZREM', L.admission, head)
  redis.call('HDEL', L.admission_seen, head)
  head = unpack(redis.call('ZRANGE', L.admission, 0, 0))
end
local backlog = tonumber(redis.call('GET', L.backlog) or '0')
if head == id and backlog + held + n <= max then
  redis.call('ZREM', L.admission, id)
  redis.call('HDEL', L.admission_seen, id)
  redis.call('HSET', L.admitted, id, string.format('%d:%d', n, now + HOLD_MS))
  return record(AD, {admitted = 1})
end
return record(AD, {admitted = 0, backlog = backlog + held, place = redis.call('ZRANK', L.admission, id)})
