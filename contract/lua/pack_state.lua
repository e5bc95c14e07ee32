-- pack_state.lua: (batch mode) move a pack on, journaled: only from the state the caller saw (two
-- workers moving one pack can't both succeed), recording fields and when to look at it next.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] pack: pack id
-- ARGV[3] expect: the state it must be in ('' for any)
-- ARGV[4] to: the new state
-- ARGV[5] due_ms: look at it again this long from now (-1: it is finished, never again)
-- ARGV[6] fields: msgpack map of fields to record (file id, provider batch id, status, counts...)
-- ARGV[7] tokens: change of the enqueued-token count (+ when its provider batch is created, - when over)
--
-- Returns 1 if it moved, 0 if it was not in `expect`.
local pk, expect, to, due = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = L.pack .. pk
local state = redis.call('HGET', key, 'state')
if not state or (expect ~= "" and state ~= expect) then return 0 end
local fields = cmsgpack.unpack(ARGV[6])
for k, v in pairs(fields) do redis.call('HSET', key, k, v) end
redis.call('HSET', key, 'state', to)
local tokens = tonumber(ARGV[7])
if tokens ~= 0 then redis.call('INCRBY', L.packs_tokens, tokens) end
if due < 0 then
  redis.call('ZREM', L.packs_due, pk)
else
  redis.call('ZADD', L.packs_due, now_ms() + due, pk)
end
return 1
