-- cancel.lua: end a chunk of a cancelled batch's jobs that have not started as cancelled (the caller
-- walks the batch's ids). Running jobs make no further call and end cancelled themselves; a call in
-- flight is stored as it comes (it was paid for).
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] ids: msgpack array of job ids
--
-- Returns how many jobs it cancelled.
local b = ARGV[2]
local now = now_ms()
local n = 0
for _, id in ipairs(cmsgpack.unpack(ARGV[3])) do
  local s = status_of(b, id)
  if s and s ~= 'running' and bucket(s) == 'queued' then
    if s == 'waiting' then
      local key = redis.call('HGET', jkey(b, id), H.flight)
      if key then redis.call('SREM', waiters_key(key), member(b, id)) end
    end
    finalize(b, id, s, 'cancelled', lua_final(b, id, 'cancelled', 'the batch was cancelled', 'Cancelled', now),
      false, now)
    n = n + 1
  end
end
return n
