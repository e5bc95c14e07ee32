-- init_batch.lua: create a batch with its spec, or return the spec it already has (a resume), and
-- register an input source, returning its index (records refer to their source by it).
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] spec: the batch spec as canonical JSON (contract/spec.py)
-- ARGV[4] step: kombu priority step its messages are published with
-- ARGV[5] source: name of the input being submitted (file path, <stdin>, <items>)
-- ARGV[6] ttl: seconds its results are kept once it is over (SUMMARIZE_RESULT_TTL)
--
-- A batch made (again) under an id gets a new generation (`gen`: a counter and Redis' time, so it is new
-- even after Redis lost its data and the counter starts again): what was kept of an earlier batch of that
-- id (a worker's copy of its spec, a cache pointer, an op of a run still in flight) is told apart.
--
-- Returns INIT_REPLY (contract/schema.py): created (0/1), the stored spec, the source's index, the generation.
local b, spec, step, source, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local bk = bkey(b)
local created = 0
if redis.call('EXISTS', bk) == 0 then
  local now = now_ms()
  redis.call('HSET', bk, B.spec, spec, B.step, step, B.ttl, ttl, B.state, 'running', B.created, now,
    B.total, 0, B.queued, 0, B.running, 0, B.done, 0, B.failed, 0, B.cancelled, 0,
    B.gen, redis.call('INCR', L.gen) .. '-' .. now)
  redis.call('ZADD', L.batches, now, b)
  created = 1
end
local src = part(b, 'sources')
local index = redis.call('LPOS', src, source)
if not index then index = redis.call('RPUSH', src, source) - 1 end
local h = hmget(bk, B.spec, B.gen)
return record(IB, {created = created, spec = h[B.spec], index = index, gen = h[B.gen] or ''})
