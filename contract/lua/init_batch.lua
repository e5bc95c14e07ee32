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
-- Returns {created (0/1), stored spec, source index, generation}.
local b, spec, step, source, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local bk = bkey(b)
local created = 0
if redis.call('EXISTS', bk) == 0 then
  local now = now_ms()
  redis.call('HSET', bk, 'spec', spec, 'step', step, 'ttl', ttl, 'state', 'running', 'created', now,
    'total', 0, 'queued', 0, 'running', 0, 'done', 0, 'failed', 0, 'cancelled', 0,
    'gen', redis.call('INCR', L.gen) .. '-' .. now)
  redis.call('ZADD', L.batches, now, b)
  created = 1
end
local src = part(b, 'sources')
local index = redis.call('LPOS', src, source)
if not index then index = redis.call('RPUSH', src, source) - 1 end
local h = hmget(bk, B.spec, B.gen)
return {created, h[B.spec], index, h[B.gen] or ''}
