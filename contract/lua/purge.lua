-- purge.lua: remove a batch from Redis after its results were exported: a chunk of its jobs per call
-- (the caller walks its ids list), then, with `last`, the batch's own keys and packs.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] ids: msgpack array of job ids
-- ARGV[4] force: '1' removes unfinished jobs too (they are counted out of the backlog); else such a job
--         stops the purge with an error naming it
-- ARGV[5] last: '1' on the final call: the batch's keys go too
-- ARGV[6] cache_ttl: seconds a cached answer is looked up for (the weeks where its pointers may be)
--
-- Returns how many jobs it removed.
local b, force, last, cache_ttl = ARGV[2], ARGV[4] == '1', ARGV[5] == '1', tonumber(ARGV[6])
local now = now_ms()
local n = 0
for _, id in ipairs(cmsgpack.unpack(ARGV[3])) do
  local s = status_of(b, id)
  if s == 'done' then
    -- The cache pointers to this job's answer would lead to nothing (or, once the id is reused, to
    -- another article): they go with it.
    local f = cmsgpack.unpack(redis.call('HGET', part(b, 'out'), id))
    local key = f[F.cache_key]
    if key and key ~= '' then cache_forget(key, member(b, id), cache_ttl, now) end
  end
  if s then
    local final = s == 'done' or s == 'failed' or s == 'cancelled'
    if not final then
      if not force then return redis.error_reply('UNFINISHED ' .. id .. ' is ' .. s) end
      redis.call('DECR', L.backlog)
      redis.call('ZREM', L.due, member(b, id))
    end
    -- A flight it leads or waits for: its twins must not wait for an answer that will write nothing.
    local fk = redis.call('HGET', jkey(b, id), H.flight)
    if fk then
      redis.call('SREM', waiters_key(fk), member(b, id))
      if redis.call('GET', flight_key(fk)) == member(b, id) then redis.call('DEL', flight_key(fk)) end
    end
    redis.call('DEL', jkey(b, id), tkey(b, id), pkey(b, id))
    n = n + 1
  end
end
if last then
  for _, pk in ipairs(redis.call('SMEMBERS', part(b, 'packs'))) do
    -- An open pack's enqueued tokens count against its (endpoint, model) for every batch: given back with
    -- it (as pack_state does when a pack ends), or the limit would stay that much fuller for good.
    release_enqueued(pack_key(pk))
    redis.call('DEL', pack_key(pk), pack_key(pk, 'jobs'), pack_key(pk, 'twins'))
    redis.call('ZREM', L.packs_due, pk)
  end
  for _, k in ipairs(batch_keys(b)) do redis.call('DEL', k) end
  redis.call('ZREM', L.batches, b)
  redis.call('ZREM', L.packing, b)
  redis.call('ZREM', L.submits, b)
end
return n
