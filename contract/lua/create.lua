-- create.lua: store a chunk of a batch's new jobs and register the messages that will carry them.
-- A job already in the batch (resumed submit) is not touched: its digest and origin come back so
-- the caller can tell a resume (same text) from an id reused for another text.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] per_message: jobs per Celery message
-- ARGV[4] admit: the submit's id when SUMMARIZE_MAX_QUEUED let this chunk in (its held room is now the
--         jobs themselves), '' otherwise
-- ARGV[5] jobs: msgpack array of {id, article (packed Article, '' for an invalid record), metadata JSON
--         ('' for none), final record ('' for a valid record; the packed failed Final of an invalid one)}
-- ARGV[6] gen: the batch generation the submit made or resumed ('' : any); a batch that is gone, or was
--         made again meanwhile, takes nothing (error NOBATCH): the submit must start again
--
-- Returns CREATE_REPLY (contract/schema.py): results[i] a CREATED, created 1, or 0 with the digest and
-- origin of the job already there; and the messages for the caller to publish.
local b, per, admit, gen = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[6]
local bgen = redis.call('HGET', bkey(b), B.gen)
if not bgen or (gen ~= '' and bgen ~= gen) then
  if admit ~= '' then redis.call('HDEL', L.admitted, admit) end
  return redis.error_reply('NOBATCH ' .. b)
end
local jobs = cmsgpack.unpack(ARGV[5])
local now = now_ms()
local results, queued_ids, failed = {}, {}, 0
local out, ids, meta, dead = part(b, 'out'), part(b, 'ids'), part(b, 'meta'), part(b, 'dead')
for i, job in ipairs(jobs) do
  local id, article, metadata, final = job[NJ.id], job[NJ.article], job[NJ.metadata], job[NJ.final]
  local tk = tkey(b, id)
  local blob, rec = redis.call('GET', tk), redis.call('HGET', out, id)
  if blob then
    local a = cmsgpack.unpack(blob)
    results[i] = record(CJ, {created = 0, digest = a[AR.digest], origin = a[AR.origin]})
  elseif rec then
    local f = cmsgpack.unpack(rec)
    results[i] = record(CJ, {created = 0, digest = f[F.digest], origin = f[F.origin]})
  else
    redis.call('RPUSH', ids, id)
    if metadata ~= '' then redis.call('HSET', meta, id, metadata) end
    if final == '' then
      redis.call('SET', tk, article)
      queued_ids[#queued_ids + 1] = id
    else
      redis.call('HSET', out, id, final)
      redis.call('SADD', dead, id)
      redis.call('XADD', part(b, 'events'), '*', 'id', id, 's', 'failed')
      failed = failed + 1
    end
    results[i] = record(CJ, {created = 1})
  end
end
local created = #queued_ids + failed
if created > 0 then
  unfinish(b)
  redis.call('HINCRBY', bkey(b), B.total, created)
  redis.call('HINCRBY', bkey(b), B.queued, #queued_ids)
  redis.call('HINCRBY', bkey(b), B.failed, failed)
  redis.call('INCRBY', L.backlog, #queued_ids)
end
if admit ~= '' then redis.call('HDEL', L.admitted, admit) end
local messages = {}
enqueue_messages(b, queued_ids, per, now, messages)
if #queued_ids == 0 and failed > 0 then maybe_finish(b, now) end
return record(CE, {results = results, messages = messages})
