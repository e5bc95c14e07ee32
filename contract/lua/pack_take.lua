-- pack_take.lua: (batch mode) open a pack: move up to `max` of a batch's waiting jobs into it, in
-- arrival order, and journal it before anything is sent. Each job is then held by the pack (status
-- packed, token = pack id) until its line's result is settled; a job is in one pack at a time.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] pack: the new pack's id
-- ARGV[4] max: most jobs in it
-- ARGV[5] lease_ms: if the worker packing it dies, another one carries on after this long
--
-- Returns the job ids now in the pack (none: nothing to pack, or the batch is not running).
local b, pk, max, lease = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local packing = part(b, 'packing')
if redis.call('HGET', bkey(b), 'state') ~= 'running' then return {} end
local ids = {}
for _, id in ipairs(redis.call('ZRANGE', packing, 0, max - 1)) do
  redis.call('ZREM', packing, id)
  if redis.call('HGET', jkey(b, id), 's') == 'packing' then
    move(b, 'packing', 'packed')
    redis.call('HSET', jkey(b, id), 's', 'packed', 'tk', pk)
    ids[#ids + 1] = id
  end
end
local oldest = redis.call('ZRANGE', packing, 0, 0, 'WITHSCORES')
if #oldest == 0 then redis.call('ZREM', L.packing, b) else redis.call('ZADD', L.packing, oldest[2], b) end
if #ids > 0 then
  for i = 1, #ids, 1000 do  -- unpack() has a limit on how many values it spreads
    redis.call('RPUSH', L.pack .. pk .. L.pack_parts.jobs, unpack(ids, i, math.min(i + 999, #ids)))
  end
  redis.call('HSET', L.pack .. pk, 'batch', b, 'state', 'new', 'created', now, 'jobs', #ids)
  redis.call('SADD', part(b, 'packs'), pk)
  redis.call('ZADD', L.packs_due, now + lease, pk)
end
return ids
