-- retry.lua: send a chunk of a batch's failed jobs again (the caller walks the dead-letter set).
-- Invalid input records have no article to send and stay failed.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] per_message: jobs per Celery message
-- ARGV[4] ids: msgpack array of job ids
--
-- Returns REQUEUE_REPLY (contract/schema.py): the messages to publish and how many jobs were queued again.
local b, per = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local ids = {}
for _, id in ipairs(cmsgpack.unpack(ARGV[4])) do
  local rec = redis.call('HGET', part(b, 'out'), id)
  local f = rec and cmsgpack.unpack(rec)
  local failed = f and f[F.status] == 'failed'
  local kept = failed and redis.call('HGET', part(b, 'kept'), id)
  if kept then
    redis.call('SET', tkey(b, id), kept)
    redis.call('HDEL', part(b, 'kept'), id)
  end
  if failed and redis.call('EXISTS', tkey(b, id)) == 1 then
    -- What it cost so far stays with it: a fresh horizon and unusable allowance, the same totals.
    redis.call('HSET', jkey(b, id), H.status, 'queued', H.attempts, f[F.attempts] or 0,
      H.prompt_tokens, f[F.prompt_tokens] or 0, H.completion_tokens, f[F.completion_tokens] or 0)
    redis.call('HDEL', part(b, 'out'), id)
    redis.call('SREM', part(b, 'dead'), id)
    move(b, 'failed', 'queued')
    redis.call('INCR', L.backlog)
    ids[#ids + 1] = id
  elseif not failed then
    redis.call('SREM', part(b, 'dead'), id)
  end
end
if #ids > 0 then
  unfinish(b)
  local bk = bkey(b)
  if redis.call('HGET', bk, B.state) == 'halted' then redis.call('HSET', bk, B.state, 'running') end
  redis.call('HDEL', bk, B.same_error, B.same_errors)  -- after the fix, the same-error count starts again
end
local messages = {}
enqueue_messages(b, ids, per, now, messages)
return record(RQ, {messages = messages, count = #ids})
