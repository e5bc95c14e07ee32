-- pack_state.lua: (batch mode) move a pack on, journaled: only from the state the caller saw (two
-- workers moving one pack can't both succeed), recording fields and when to look at it next. Its
-- enqueued tokens are given back once (`release`: its provider batch ended, or it never had one). A
-- pack moved to `done` leaves a line of the batch's pack log (what `status` shows of it, expiring with
-- the batch) and its own keys go: Redis keeps keys only for the packs that are open.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] pack: pack id
-- ARGV[3] expect: the state it must be in ('' for any)
-- ARGV[4] to: the new state
-- ARGV[5] due_ms: look at it again this long from now (-1: never again)
-- ARGV[6] fields: msgpack map of fields to record (file id, provider batch id, status, counts...)
-- ARGV[7] release: 1 gives the pack's enqueued tokens back (once), 0 keeps them counted
-- ARGV[8] scope: the scope the journal names, read by the caller so that its counter is declared ('' : none)
--
-- Returns 1 if it moved, 0 if it was not in `expect`.
local pk, expect, to, due = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = pack_key(pk)
local state = redis.call('HGET', key, PK.state)
if not state or (expect ~= '' and state ~= expect) then return 0 end
for k, v in pairs(cmsgpack.unpack(ARGV[6])) do redis.call('HSET', key, k, v) end
redis.call('HSET', key, PK.state, to)
if ARGV[7] == '1' then release_enqueued(key) end
if due < 0 then
  redis.call('ZREM', L.packs_due, pk)
else
  redis.call('ZADD', L.packs_due, now_ms() + due, pk)
end
if to == 'done' then
  local flat = redis.call('HGETALL', key)
  local info = {}
  for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
  local b = info[PK.batch]
  if b and redis.call('EXISTS', bkey(b)) == 1 then
    redis.call('HSET', part(b, 'packlog'), pk, cjson.encode(info))
    local ttl = redis.call('TTL', bkey(b))
    if ttl > 0 then redis.call('EXPIRE', part(b, 'packlog'), ttl) end
  end
  if b then redis.call('SREM', part(b, 'packs'), pk) end
  redis.call('DEL', key, pack_key(pk, 'jobs'), pack_key(pk, 'twins'))
  redis.call('ZREM', L.packs_due, pk)
end
return 1
