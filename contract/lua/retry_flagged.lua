-- retry_flagged.lua: send a chunk of a batch's done jobs again whose answer the checks flagged
-- (contract/checks.py; `summarize retry B --flagged`). Their article was kept when the flagged record
-- landed (_lib.lua flagged); a done job without flags, or without its article, stays as it is.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] per_message: jobs per Celery message
-- ARGV[4] ids: msgpack array of job ids
-- ARGV[5] cache_ttl: seconds a cached answer is looked up for (the weeks where its pointers may be)
--
-- Returns REQUEUE_REPLY (contract/schema.py): the messages to publish and how many jobs were queued again.
local b, per, cache_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
local now = now_ms()
local ids = {}
local bk = bkey(b)
-- A cancelled batch's claim ends every queued job cancelled: a flagged but usable answer sent there again
-- would be lost (summary and article both). It stays as it is.
if redis.call('HGET', bk, B.state) == 'cancelled' then return record(RQ, {messages = {}, count = 0}) end
for _, id in ipairs(cmsgpack.unpack(ARGV[4])) do
  local rec = redis.call('HGET', part(b, 'out'), id)
  local f = rec and cmsgpack.unpack(rec)
  local kept = f and f[F.status] == 'done' and flagged(f) and redis.call('HGET', part(b, 'kept'), id)
  if kept then
    -- The flagged answer may be the cached one (this job's, or another batch's it was served): asked
    -- again, the job must not be handed that same answer by the cache. A clean cached answer may serve it.
    local key = f[F.cache_key]
    if key and key ~= '' then
      local ptr = cache_lookup(key, cache_ttl, now)
      local c = ptr and cached_record(ptr, key)
      if c and flagged(c) then cache_forget(key, ptr, cache_ttl, now) end
    end
    redis.call('SET', tkey(b, id), kept)
    redis.call('HDEL', part(b, 'kept'), id)
    -- What it cost so far stays with it: the same totals, a fresh unusable allowance.
    redis.call('HSET', jkey(b, id), H.status, 'queued', H.attempts, f[F.attempts] or 0,
      H.prompt_tokens, f[F.prompt_tokens] or 0, H.completion_tokens, f[F.completion_tokens] or 0)
    redis.call('HDEL', part(b, 'out'), id)
    count_flags(b, f[F.flags], -1)
    move(b, 'done', 'queued')
    redis.call('INCR', L.backlog)
    ids[#ids + 1] = id
  end
end
if #ids > 0 then
  unfinish(b)
  -- As retry.lua: asking again after the fix (another model) is what un-halts a halted batch; left halted,
  -- its claim would fail every job sent again, losing the flagged answers.
  if redis.call('HGET', bk, B.state) == 'halted' then
    redis.call('HSET', bk, B.state, 'running')
    redis.call('HDEL', bk, B.same_error, B.same_errors)
  end
end
local messages = {}
enqueue_messages(b, ids, per, now, messages)
return record(RQ, {messages = messages, count = #ids})
