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
-- Returns PACK_TAKE_REPLY (contract/schema.py): verdict ok (made), none (only jobs sent online, or nothing), full (no
-- room under the limit now), paused (the budget refused it: the batch paused), busy (a job is no longer
-- waiting: another worker took it), gone (the batch is not running, or is another generation).
local b, gen, pk = ARGV[2], ARGV[3], ARGV[4]
local jobs, twins, online = cmsgpack.unpack(ARGV[5]), cmsgpack.unpack(ARGV[6]), cmsgpack.unpack(ARGV[7])
local scope, tokens, limit, usd = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local lease, per = tonumber(ARGV[12]), tonumber(ARGV[13])
local now = now_ms()
local bk, packing = bkey(b), part(b, 'packing')
local messages = {}
local function taken(verdict) return record(PT, {verdict = verdict, messages = messages}) end
if not live(b, gen) or redis.call('HGET', bk, B.state) ~= 'running' then return taken('gone') end

local sent = {}
for _, id in ipairs(online) do
  if redis.call('HGET', jkey(b, id), H.status) == 'packing' then
    redis.call('ZREM', packing, id)
    move(b, 'packing', 'queued')
    redis.call('HSET', jkey(b, id), H.status, 'queued', H.online, '1')
    sent[#sent + 1] = id
  elseif redis.call('ZSCORE', packing, id) then
    redis.call('ZREM', packing, id)  -- left in the set by a job that ended meanwhile (cancelled)
  end
end
enqueue_messages(b, sent, per, now, messages)

local function settle_index()
  local _, score = unpack(redis.call('ZRANGE', packing, 0, 0, 'WITHSCORES'))
  if not score then redis.call('ZREM', L.packing, b) else redis.call('ZADD', L.packing, score, b) end
end
if #jobs == 0 then settle_index(); return taken('none') end

local all = {}
for _, id in ipairs(jobs) do all[#all + 1] = id end
for twin, _ in pairs(twins) do all[#all + 1] = twin end
local busy = false
for _, id in ipairs(all) do
  if redis.call('HGET', jkey(b, id), H.status) ~= 'packing' then
    redis.call('ZREM', packing, id)  -- taken by another worker, or ended: it is no longer waiting here
    busy = true
  end
end
if busy then settle_index(); return taken('busy') end
local enq = enq_key(scope)
if limit > 0 and tonumber(redis.call('GET', enq) or '0') + tokens > limit then return taken('full') end
local h = hmget(bk, B.budget_usd, B.budget_tokens, B.spent_usd, B.spent_tokens, B.held_usd, B.held_tokens)
local capped = h[B.budget_usd] or h[B.budget_tokens]
if capped then
  local over_usd = h[B.budget_usd]
    and tonumber(h[B.spent_usd] or '0') + tonumber(h[B.held_usd] or '0') + usd > tonumber(h[B.budget_usd])
  local over_tokens = h[B.budget_tokens]
    and tonumber(h[B.spent_tokens] or '0') + tonumber(h[B.held_tokens] or '0') + tokens > tonumber(h[B.budget_tokens])
  if over_usd or over_tokens then
    redis.call('HSET', bk, B.state, 'paused', B.reason, 'budget')
    return taken('paused')
  end
  put_hold(b, hold_field('', pk), tokens, usd)
  add_held(b, tokens, usd)
end

for _, id in ipairs(all) do
  redis.call('ZREM', packing, id)
  move(b, 'packing', 'packed')
  redis.call('HSET', jkey(b, id), H.status, 'packed', H.token, pk)
end
settle_index()
local pkey_ = pack_key(pk)
for i = 1, #all, 1000 do  -- unpack() has a limit on how many values it spreads
  redis.call('RPUSH', pack_key(pk, 'jobs'), unpack(all, i, math.min(i + 999, #all)))
end
for twin, leader in pairs(twins) do redis.call('HSET', pack_key(pk, 'twins'), twin, leader) end
redis.call('HSET', pkey_, PK.batch, b, PK.gen, gen, PK.state, 'new', PK.created, now, PK.jobs, #all, PK.scope, scope,
  PK.enq, tokens, PK.held_usd, capped and usd or 0, PK.held_tokens, capped and tokens or 0,
  PK.lease_ms, lease)
for k, v in pairs(cmsgpack.unpack(ARGV[14])) do redis.call('HSET', pkey_, k, v) end
redis.call("INCRBY", enq, tokens)
redis.call("INCRBY", L.packs_tokens, tokens)
redis.call('SADD', part(b, 'packs'), pk)
redis.call('ZADD', L.packs_due, now + lease, pk)
return taken('ok')
