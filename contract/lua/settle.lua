-- settle.lua: store the outcomes of many runs at once (the worker's writer batches them). Billed
-- tokens and cost count whatever becomes of the job: the provider charged them.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] ops: msgpack array of {kind, batch, id, token, attempts, unusable, prompt_tokens,
--         completion_tokens, cost_usd, extra}; kind and extra:
--           done:  extra = packed Final; stored even if the job failed or was re-run meanwhile (a late
--                  result wins: the user would rather have the summary)
--           fail:  extra = {packed Final, halt message ('' unless the provider rejected the key/model)}
--           defer: extra = {delay_ms, error_type, error, counts_as_failure (0/1)}
--           part:  extra = {key, summary} of one part of a long article, kept for later runs; the
--                  counts go to the job so its final record sums every call
--
-- Returns one integer per op: 1 applied, 0 ignored (already settled, or another run holds the job).
local ops = cmsgpack.unpack(ARGV[2])
local now = now_ms()
local applied = {}

local function bill(b, op)
  local bk = bkey(b)
  if op[7] > 0 then redis.call('HINCRBY', bk, 'prompt_tokens', op[7]) end
  if op[8] > 0 then redis.call('HINCRBY', bk, 'completion_tokens', op[8]) end
  if op[6] > 0 then redis.call('HINCRBY', bk, 'unusable', op[6]) end
  if op[5] > 0 then redis.call('HINCRBY', bk, 'calls', op[5]) end
  if op[9] > 0 then redis.call('HINCRBYFLOAT', bk, 'cost_usd', op[9]) end
end

local function done(b, id, op)
  local s = redis.call('HGET', jkey(b, id), 's')
  if not s then
    local rec = redis.call('HGET', part(b, 'out'), id)
    if rec then
      if cmsgpack.unpack(rec)[1] ~= 'failed' then return 0 end
      -- A late result for a job that failed meanwhile: it was counted out of the backlog already.
      move(b, 'failed', 'done')
      redis.call('SREM', part(b, 'dead'), id)
      redis.call('HSET', part(b, 'out'), id, op[10])
      redis.call('DEL', tkey(b, id))
      redis.call('XADD', part(b, 'events'), '*', 'id', id, 's', 'done')
      return 1
    end
    if redis.call('EXISTS', tkey(b, id)) == 0 then return 0 end
    s = 'queued'
  end
  finalize(b, id, s, 'done', op[10], false, now)
  return 1
end

local function holds(b, id, token)
  local h = redis.call('HMGET', jkey(b, id), 's', 'tk')
  return h[1] == 'running' and h[2] == token
end

local function fail(b, id, op)
  if not holds(b, id, op[4]) then return 0 end
  local record, halt = op[10][1], op[10][2]
  if halt ~= '' and redis.call('HGET', bkey(b), 'state') == 'running' then
    redis.call('HSET', bkey(b), 'state', 'halted', 'halt', halt)
  end
  finalize(b, id, 'running', 'failed', record, true, now)
  return 1
end

local function add_counts(jk, op)
  for name, k in pairs({a = 5, x = 6, pt = 7, ct = 8}) do
    if op[k] > 0 then redis.call('HINCRBY', jk, name, op[k]) end
  end
end

local function part(b, id, op)
  if not holds(b, id, op[4]) then return 0 end
  add_counts(jkey(b, id), op)
  redis.call('HSET', pkey(b, id), op[10][1], op[10][2])
  return 1
end

local function defer(b, id, op)
  if not holds(b, id, op[4]) then return 0 end
  local jk, x = jkey(b, id), op[10]
  move(b, 'running', 'deferred')
  redis.call('HSET', jk, 's', 'deferred', 'e', x[2], 'em', string.sub(x[3], 1, 200))
  redis.call('HDEL', jk, 'tk', 'l')
  add_counts(jk, op)
  -- A worker handing a job back on shutdown is no failure: it must not start the retry horizon.
  if x[4] == 1 then
    redis.call('HSETNX', jk, 'f', now)
    redis.call('HINCRBY', jk, 'd', 1)
  end
  redis.call('ZADD', L.due, now + x[1], member(b, id))
  return 1
end

local kinds = {done = done, fail = fail, defer = defer, part = part}
for i, op in ipairs(ops) do
  local b, id = op[2], op[3]
  bill(b, op)
  applied[i] = kinds[op[1]](b, id, op)
end
return applied
