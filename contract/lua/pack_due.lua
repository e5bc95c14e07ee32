-- pack_due.lua: (batch mode, the reaper) what needs a worker now: batches to pack (the oldest waiting
-- job waited `linger`, or a full pack is waiting) and packs to move on (due to be polled, or left half
-- done by a worker that died). Each is pushed a lease ahead (a pack: at least its own) so the next tick
-- does not publish it again.
-- A batch that is over for packing (cancelled, or gone) leaves the index; a paused or halted one is not
-- published until it runs again.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] linger_ms: SUMMARIZE_BATCH_LINGER in ms
-- ARGV[3] max: jobs in a full pack (SUMMARIZE_BATCH_MAX_REQUESTS)
-- ARGV[4] lease_ms: how long until a published one is looked at again
--
-- Returns PACK_DUE_REPLY (contract/schema.py): batch ids to pack, pack ids to move on.
local linger, max, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local batches, packs = {}, {}
local waiting = redis.call('ZRANGEBYSCORE', L.packing, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 100)
for i = 1, #waiting, 2 do
  local b, since = waiting[i], tonumber(waiting[i + 1])
  local state = redis.call('HGET', bkey(b), B.state)
  if state == 'cancelled' or not state then
    redis.call('ZREM', L.packing, b)
    redis.call('DEL', part(b, 'packing'))
  elseif state ~= 'running' then
    redis.call('ZADD', L.packing, 'XX', now + lease, b)
  elseif since <= now - linger or redis.call('ZCARD', part(b, 'packing')) >= max then
    batches[#batches + 1] = b
    redis.call('ZADD', L.packing, 'XX', now + lease, b)
  end
end
for _, pk in ipairs(redis.call('ZRANGEBYSCORE', L.packs_due, '-inf', now, 'LIMIT', 0, 100)) do
  packs[#packs + 1] = pk
  -- A pack's step is leased for as long as its calls can take (its own lease_ms): no second worker
  -- joins one that is still working.
  local own = tonumber(redis.call('HGET', pack_key(pk), PK.lease_ms) or '0')
  redis.call('ZADD', L.packs_due, 'XX', now + math.max(lease, own), pk)
end
return record(PD, {batches = batches, packs = packs})
