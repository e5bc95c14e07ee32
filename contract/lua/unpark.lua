-- unpark.lua: queue again a chunk of a resumed batch's parked jobs (the caller walks the parked set).
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
  redis.call('SREM', part(b, 'parked'), id)
  if redis.call('HGET', jkey(b, id), H.status) == 'parked' then
    redis.call('HSET', jkey(b, id), H.status, 'queued')
    ids[#ids + 1] = id
  end
end
local messages = {}
enqueue_messages(b, ids, per, now, messages)
return record(RQ, {messages = messages, count = #ids})
