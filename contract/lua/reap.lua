-- reap.lua: what one worker at a time (under the reaper lock) does for the whole fleet: re-enqueue
-- jobs whose lease lapsed and deferred jobs that are due, and publish again the messages the queue
-- has passed without any worker claiming them (lost between BRPOP and kombu's unacked record,
-- reserved by a killed worker, or never published by a producer that died).
--
-- Every time is Redis' own. After a gap in reaping (Redis down, no worker running) no lease is
-- reaped until reaping has gone on for a whole lease: a live holder renews within a third of it.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] lease_ms: SUMMARIZE_LEASE_SECONDS in ms
-- ARGV[3] grace_ms: SUMMARIZE_QUEUED_GRACE in ms
-- ARGV[4] gap_ms: a pause in reaping longer than this counts as a gap
-- ARGV[5] per_message: jobs per Celery message
-- ARGV[6] limit: most members looked at per set per call
-- ARGV[7] empty: msgpack array of the priority steps whose broker queue was empty just before this call
--   (the caller asks the broker: it is another Redis than the store's, see docs/scale.md)
--
-- Returns REAP_REPLY (contract/schema.py): the messages to publish, and how many jobs came back by a
-- lapsed lease, a due retry, a lost message.
local lease, grace, gap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local per, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local empty = {}
for _, step in ipairs(cmsgpack.unpack(ARGV[7])) do empty[tostring(step)] = true end
local now = now_ms()
local clock = hmget(L.reaper, RH.last, RH.resumed)
local resumed = tonumber(clock[RH.resumed] or '0')
if not clock[RH.last] or now - tonumber(clock[RH.last]) > gap then
  resumed = now
  redis.call('HSET', L.reaper, RH.resumed, now)
end
redis.call('HSET', L.reaper, RH.last, now)
local leases_trusted = now - resumed >= lease

-- Jobs whose lost run had calls in flight go first in their batch's messages: their estimated holds count
-- against a budget at the bound until their rerun learns the provider's count of the prompt, so under a
-- tight budget they must not wait behind the batch's other jobs (which would meet a cap the estimates fill).
local by_batch, first, order = {}, {}, {}
local function requeue(b, id, ahead)
  if not by_batch[b] then by_batch[b] = {}; first[b] = {}; order[#order + 1] = b end
  table.insert(ahead and first[b] or by_batch[b], id)
end

-- Leases and deferrals.
local reclaimed, due = 0, 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', L.due, '-inf', now, 'LIMIT', 0, limit)) do
  local b, id = unmember(m)
  local jk = jkey(b, id)
  local s = redis.call('HGET', jk, H.status)
  if s == 'running' then
    if leases_trusted and tonumber(redis.call('HGET', jk, H.lease) or '0') <= now then
      release_run(b, id)  -- its calls may have been billed: their holds become estimated spend
      move(b, 'running', 'queued')
      redis.call('HSET', jk, H.status, 'queued')
      redis.call('HDEL', jk, H.token, H.lease)
      redis.call('ZREM', L.due, m)
      reclaimed = reclaimed + 1
      requeue(b, id, (redis.call('HGET', jk, H.dead_runs) or '') ~= '')
    end
  elseif s == 'deferred' then
    redis.call('HSET', jk, H.status, 'queued')
    redis.call('ZREM', L.due, m)
    due = due + 1
    requeue(b, id)
  elseif s == 'waiting' then
    -- Waiting for a twin's call: while its leader's flight lives, look again later; once it lapsed (the
    -- leader's worker died), this job takes over.
    local key = redis.call('HGET', jk, H.flight)
    if key and redis.call('EXISTS', flight_key(key)) == 1 then
      redis.call('ZADD', L.due, now + lease, m)
    else
      if key then redis.call('SREM', waiters_key(key), m) end
      redis.call('HSET', jk, H.status, 'queued')
      redis.call('HDEL', jk, H.flight)
      redis.call('ZREM', L.due, m)
      due = due + 1
      requeue(b, id)
    end
  else
    redis.call('ZREM', L.due, m)
  end
end

-- Lost messages: the queue has moved past them (a message queued `grace` later was claimed), or
-- the queue is empty and they have waited `grace`. Only their still-queued jobs go out again.
local republished = 0
for step in pairs(I.orphans) do
  local orphans = orphans_key(step)
  local cutoff = tonumber(redis.call('HGET', L.hw, step) or '0') - grace
  if empty[step] then cutoff = math.max(cutoff, now - grace) end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', orphans, '-inf', '(' .. cutoff, 'LIMIT', 0, limit)) do
    redis.call('ZREM', orphans, m)
    local ids = split(m, L.msep)
    local b = table.remove(ids, 1)  -- a message: its batch, then its jobs
    for _, id in ipairs(ids) do
      if status_of(b, id) == 'queued' then
        republished = republished + 1
        requeue(b, id)
      end
    end
  end
end

-- Submits that went away while storing chunks: their lease lapsed, so their batches may be over.
for _, b in ipairs(redis.call('ZRANGEBYSCORE', L.submits, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', L.submits, b)
  if redis.call('EXISTS', bkey(b)) == 1 then
    local until_ms = tonumber(redis.call('HGET', bkey(b), B.submitting) or '0')
    if until_ms <= now then
      redis.call('HDEL', bkey(b), B.submitting)
      maybe_finish(b, now)
    else
      redis.call('ZADD', L.submits, until_ms, b)
    end
  end
end

-- The batches index keeps only batches that still exist (expired ones leave it): a page per round,
-- walking it by creation time from where the last round stopped.
local cursor = redis.call('HGET', L.reaper, RH.batch_cursor)
local from = cursor and ('(' .. cursor) or '-inf'
local page = redis.call('ZRANGEBYSCORE', L.batches, from, '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #page, 2 do
  if redis.call('EXISTS', bkey(page[i])) == 0 then redis.call('ZREM', L.batches, page[i]) end
end
if #page < 2 * limit then
  redis.call('HDEL', L.reaper, RH.batch_cursor)
else
  redis.call('HSET', L.reaper, RH.batch_cursor, page[#page])
end

local messages = {}
for _, b in ipairs(order) do
  local ids = first[b]
  for _, id in ipairs(by_batch[b]) do ids[#ids + 1] = id end
  enqueue_messages(b, ids, per, now, messages)
end
if reclaimed > 0 then redis.call('HINCRBY', L.stats, ST.reclaimed, reclaimed) end
if republished > 0 then redis.call('HINCRBY', L.stats, ST.republished, republished) end
return record(RP, {messages = messages, reclaimed = reclaimed, due = due, republished = republished})
