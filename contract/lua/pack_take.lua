-- pack_take.lua: (batch mode) open a pack from the lines a worker built, all at once or not at all: its
-- jobs (the leaders, one line each, and the identical articles sharing their lines) move into it, its
-- tokens are counted against the enqueued-token limit of its (endpoint, model), its worst case is held
-- against the batch's budget under the pack's own field of the batch's holds (see _lib.lua), and it is
-- journaled before anything is sent. Each job is then held by the pack (status packed, token = pack id)
-- until its line's result is settled; a job is in one pack at a time. A pack that cannot be made now
-- (no room left, a job taken meanwhile) writes nothing: the batch waits for room.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] gen: the batch generation the lines were built for
-- ARGV[4] pack: the new pack's id
-- ARGV[5] jobs: msgpack array of the job ids with a line of their own
-- ARGV[6] twins: msgpack map of job id -> the job id whose line answers it too
-- ARGV[7] online: msgpack array of job ids to send online instead (too long for one request, or for
--         the whole enqueued-token limit), or found waiting with no article left (ended meanwhile: they
--         leave the set); moved even when no pack is made
-- ARGV[8] scope: the (endpoint, model) whose enqueued tokens the pack counts in
-- ARGV[9] tokens: the pack's enqueued tokens (prompt bound + completion room of every line)
-- ARGV[10] limit: the enqueued-token limit of the scope (0: none)
-- ARGV[11] usd: the pack's worst-case cost (completion room at the output price, at the batch discount)
-- ARGV[12] lease_ms: if the worker uploading it dies, the pack is dissolved after this long
-- ARGV[13] per_message: jobs per Celery message (for the jobs sent online)
-- ARGV[14] fields: msgpack map of journal fields (lines, bytes, endpoint)
--
-- Returns {verdict, messages}: verdict ok (made), none (only jobs sent online, or nothing), full (no
-- room under the limit now), paused (the budget refused it: the batch paused), busy (a job is no longer
-- waiting: another worker took it), gone (the batch is not running, or is another generation).
local b, gen, pk = ARGV[2], ARGV[3], ARGV[4]
local jobs, twins, online = cmsgpack.unpack(ARGV[5]), cmsgpack.unpack(ARGV[6]), cmsgpack.unpack(ARGV[7])
local scope, tokens, limit, usd = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local lease, per = tonumber(ARGV[12]), tonumber(ARGV[13])
local now = now_ms()
local bk, packing = bkey(b), part(b, 'packing')
local messages = {}
if not live(b, gen) or redis.call('HGET', bk, 'state') ~= 'running' then return {'gone', messages} end

local sent = {}
for _, id in ipairs(online) do
  if redis.call('HGET', jkey(b, id), 's') == 'packing' then
    redis.call('ZREM', packing, id)
    move(b, 'packing', 'queued')
    redis.call('HSET', jkey(b, id), 's', 'queued', 'online', '1')
    sent[#sent + 1] = id
  elseif redis.call('ZSCORE', packing, id) then
    redis.call('ZREM', packing, id)  -- left in the set by a job that ended meanwhile (cancelled)
  end
end
enqueue_messages(b, sent, per, now, messages)

local function settle_index()
  local oldest = redis.call('ZRANGE', packing, 0, 0, 'WITHSCORES')
  if #oldest == 0 then redis.call('ZREM', L.packing, b) else redis.call('ZADD', L.packing, oldest[2], b) end
end
if #jobs == 0 then settle_index(); return {'none', messages} end

local all = {}
for _, id in ipairs(jobs) do all[#all + 1] = id end
for twin, _ in pairs(twins) do all[#all + 1] = twin end
local busy = false
for _, id in ipairs(all) do
  if redis.call('HGET', jkey(b, id), 's') ~= 'packing' then
    redis.call('ZREM', packing, id)  -- taken by another worker, or ended: it is no longer waiting here
    busy = true
  end
end
if busy then settle_index(); return {'busy', messages} end
local enq = L.enq .. scope
if limit > 0 and tonumber(redis.call('GET', enq) or '0') + tokens > limit then return {'full', messages} end
local h = redis.call('HMGET', bk, 'budget_usd', 'budget_tokens', 'spent_usd', 'spent_tokens', 'held_usd',
  'held_tokens')
if h[1] or h[2] then
  local over_usd = h[1] and tonumber(h[3] or '0') + tonumber(h[5] or '0') + usd > tonumber(h[1])
  local over_tokens = h[2] and tonumber(h[4] or '0') + tonumber(h[6] or '0') + tokens > tonumber(h[2])
  if over_usd or over_tokens then
    redis.call('HSET', bk, 'state', 'paused', 'reason', 'budget')
    return {'paused', messages}
  end
  put_hold(b, hold_field('', pk), tokens, usd)
  add_held(b, tokens, usd)
end

for _, id in ipairs(all) do
  redis.call('ZREM', packing, id)
  move(b, 'packing', 'packed')
  redis.call('HSET', jkey(b, id), 's', 'packed', 'tk', pk)
end
settle_index()
local pkey_ = L.pack .. pk
for i = 1, #all, 1000 do  -- unpack() has a limit on how many values it spreads
  redis.call('RPUSH', pkey_ .. L.pack_parts.jobs, unpack(all, i, math.min(i + 999, #all)))
end
for twin, leader in pairs(twins) do redis.call('HSET', pkey_ .. L.pack_parts.twins, twin, leader) end
redis.call('HSET', pkey_, 'batch', b, 'gen', gen, 'state', 'new', 'created', now, 'jobs', #all, 'scope', scope,
  'enq', tokens, 'held_usd', (h[1] or h[2]) and usd or 0, 'held_tokens', (h[1] or h[2]) and tokens or 0,
  'lease_ms', lease)
for k, v in pairs(cmsgpack.unpack(ARGV[14])) do redis.call('HSET', pkey_, k, v) end
redis.call("INCRBY", enq, tokens)
redis.call("INCRBY", L.packs_tokens, tokens)
redis.call('SADD', part(b, 'packs'), pk)
redis.call('ZADD', L.packs_due, now + lease, pk)
return {'ok', messages}
