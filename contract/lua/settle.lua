-- settle.lua: store the outcomes of many runs at once (the worker's writer batches them). Billed
-- tokens and cost count whatever becomes of the job: the provider charged them.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] per_message: jobs per Celery message (for twins queued again when their leader did not answer)
-- ARGV[3] cache_ttl: seconds a cached answer is kept findable
-- ARGV[4] ops: msgpack array of {kind, batch, id, token, attempts, unusable, prompt_tokens,
--         completion_tokens, cost_usd, extra, cache_key, gen}; an op whose batch generation (gen) is
--         not the batch's (purged, expired, or made again under the same id) writes nothing at all;
--         kind and extra:
--           done:   extra = packed Final; stored even if the job failed or was re-run meanwhile (a late
--                   result wins: the user would rather have the summary). With a cache key, the answer
--                   is cached and the twins waiting for it are done from it.
--           fail:   extra = {packed Final, halt message ('' unless the provider rejected the key/model),
--                   same-error signature ('' unless a provider's 4xx that may fail every job alike)}
--           defer:  extra = {delay_ms, error_type, error, counts_as_failure (0/1)}
--           part:   extra = {key, summary} of one part of a long article, kept for later runs; the
--                   counts go to the job so its final record sums every call
--           park:   the batch was paused: the job waits, holding nothing, until it is resumed. Decided
--                   on the batch's state here, not the worker's copy of it: if the batch is running again
--                   (resumed meanwhile), the job is queued again instead
--           cancel: the batch was cancelled before this run's next call
--           repack: (batch mode) extra = {online (0/1), error_type ('' when it was no failure),
--                   error}: the line goes into a later pack, or online
--           spend:  extra = {held_usd, held_tokens, spent_usd, spent_tokens, estimated (0/1: a timeout
--                   that may have been billed is spent at its bound), save_tokens, save_usd (a
--                   whole-article call: how far the provider's prompt count fell under the byte bound,
--                   which tightens the estimates of the job's dead runs)}: a call's budget hold
--                   replaced by what it really cost (no job change). If the run lost its job meanwhile,
--                   its hold was counted as estimated spend (drop_holds): the estimate is corrected
--         cost_usd is -1 when a call's price was unknown: the job's cost is then null, never 0.
-- ARGV[5] halt_after: a batch none of whose jobs is done yet halts once this many of its jobs failed with
--         the same permanent provider error (fail's extra[3]; 0: never)
--
-- Returns {applied, messages}: applied[i] is 1 or 0 (already settled, or another run holds the job);
-- messages are {step, member} pairs to publish (twins whose leader did not answer).
local per, cache_ttl, halt_after = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local ops = cmsgpack.unpack(ARGV[4])
local now = now_ms()
local applied, messages = {}, {}

local function bill(b, op)
  local bk = bkey(b)
  if op[7] > 0 then redis.call('HINCRBY', bk, 'prompt_tokens', op[7]) end
  if op[8] > 0 then redis.call('HINCRBY', bk, 'completion_tokens', op[8]) end
  if op[6] > 0 then redis.call('HINCRBY', bk, 'unusable', op[6]) end
  if op[5] > 0 then redis.call('HINCRBY', bk, 'calls', op[5]) end
  if op[9] > 0 then redis.call('HINCRBYFLOAT', bk, 'cost_usd', op[9]) end
end

local function add_counts(jk, op)
  for name, k in pairs({a = 5, x = 6, pt = 7, ct = 8}) do
    if op[k] > 0 then redis.call('HINCRBY', jk, name, op[k]) end
  end
  -- A cost that was unknown stays unknown (-1) whatever comes after.
  if op[9] < 0 then
    redis.call('HSET', jk, 'c', -1)
  elseif op[9] > 0 and tonumber(redis.call('HGET', jk, 'c') or '0') >= 0 then
    redis.call('HINCRBYFLOAT', jk, 'c', op[9])
  end
end

-- The run (or the pack, in batch mode) holding the job is the one settling it.
local function holds(b, id, token)
  local h = redis.call('HMGET', jkey(b, id), 's', 'tk')
  return (h[1] == 'running' or h[1] == 'packed') and h[2] == token, h[1]
end

local function remember(b, id, op, record)
  local key = op[11]
  if key and key ~= '' then cache_store(key, member(b, id), cache_ttl, now) end
  land(b, id, cmsgpack.unpack(record), now, per, messages)
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
      redis.call('HDEL', part(b, 'kept'), id)
      redis.call('XADD', part(b, 'events'), '*', 'id', id, 's', 'done')
      return 1
    end
    if redis.call('EXISTS', tkey(b, id)) == 0 then return 0 end
    s = 'queued'
  end
  remember(b, id, op, op[10])
  finalize(b, id, s, 'done', op[10], false, now)
  return 1
end

local function fail(b, id, op)
  local ok, s = holds(b, id, op[4])
  if not ok then return 0 end
  local record, halt, sig = op[10][1], op[10][2], op[10][3] or ''
  local bk = bkey(b)
  if halt == '' and sig ~= '' and halt_after > 0 and tonumber(redis.call('HGET', bk, 'done') or '0') == 0 then
    -- The first calls of a batch all failing alike: the rest would too, one paid discovery at a time.
    local seen = redis.call('HGET', bk, 'fsig')
    if not seen then
      redis.call('HSET', bk, 'fsig', sig, 'fsig_n', 1)
    elseif seen == sig then
      if redis.call('HINCRBY', bk, 'fsig_n', 1) >= halt_after then
        halt = 'the first ' .. halt_after .. ' jobs all failed with the same error: ' .. sig
      end
    end
  end
  if halt ~= '' and redis.call('HGET', bk, 'state') == 'running' then
    redis.call('HSET', bk, 'state', 'halted', 'halt', halt)
  end
  land(b, id, nil, now, per, messages, cmsgpack.unpack(record))
  finalize(b, id, s, 'failed', record, true, now)
  return 1
end

-- Batch mode: a line that came back as an error, unusable, or never ran (expired, a failed batch) goes
-- into a later pack, or (extra[1] == 1) online.
local function repack(b, id, op)
  local ok, s = holds(b, id, op[4])
  if not ok then return 0 end
  local jk, x = jkey(b, id), op[10]
  add_counts(jk, op)
  if x[2] ~= '' then  -- '' : no failure, only no room in that pack
    redis.call('HSET', jk, 'e', x[2], 'em', string.sub(x[3], 1, 200))
    redis.call('HINCRBY', jk, 'bx', 1)
  end
  release_run(b, id)
  if x[1] == 1 then
    move(b, s, 'queued')
    redis.call('HSET', jk, 's', 'queued', 'online', '1')
    redis.call('HDEL', jk, 'tk', 'l')
    enqueue_messages(b, {id}, per, now, messages)
  else
    to_packing(b, id, s, now)
  end
  return 1
end

local function defer(b, id, op)
  if not holds(b, id, op[4]) then return 0 end
  local jk, x = jkey(b, id), op[10]
  land(b, id, nil, now, per, messages)
  release_run(b, id)
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

local function keep_part(b, id, op)
  if not holds(b, id, op[4]) then return 0 end
  add_counts(jkey(b, id), op)
  redis.call('HSET', pkey(b, id), op[10][1], op[10][2])
  return 1
end

local function park(b, id, op)
  if not holds(b, id, op[4]) then return 0 end
  local jk = jkey(b, id)
  land(b, id, nil, now, per, messages)
  release_run(b, id)
  redis.call('HDEL', jk, 'tk', 'l')
  add_counts(jk, op)
  redis.call('ZREM', L.due, member(b, id))
  if redis.call('HGET', bkey(b), 'state') ~= 'paused' then
    -- Resumed (or cancelled) since the worker looked: resume has walked the parked set already, so
    -- the job goes back on the queue (a cancelled batch's claim ends it there).
    move(b, 'running', 'queued')
    redis.call('HSET', jk, 's', 'queued')
    enqueue_messages(b, {id}, per, now, messages)
    return 1
  end
  move(b, 'running', 'parked')
  redis.call('HSET', jk, 's', 'parked')
  redis.call('SADD', part(b, 'parked'), id)
  return 1
end

local function cancel(b, id, op)
  local ok, s = holds(b, id, op[4])
  if not ok then return 0 end
  add_counts(jkey(b, id), op)
  land(b, id, nil, now, per, messages)
  finalize(b, id, s, 'cancelled', lua_final(b, id, 'cancelled', 'the batch was cancelled', 'Cancelled', now),
    false, now)
  return 1
end

-- The dead runs of a job whose calls were counted at their bound: its new run just made the same
-- whole-article request, and the provider counted its prompt at `save_t` tokens (`save_u` USD) under the
-- byte bound; each of their calls had that same prompt, so their estimates shrink by that much a call,
-- once (and stay upper bounds: the completion part keeps its whole max_tokens).
local function tighten(b, id, save_t, save_u)
  local jk = jkey(b, id)
  local dr = redis.call('HGET', jk, 'dr')
  if not dr then return end
  for _, token in ipairs(split(dr, ' ')) do
    local f = '~' .. hold_field(id, token)
    local et, eu, en = get_hold(b, f)
    local cut_t, cut_u = math.min(en * save_t, et), math.min(en * save_u, eu)
    if en > 0 and cut_t > 0 then
      put_hold(b, f, et - cut_t, eu - cut_u, 0)
      add_spent(b, -cut_t, -cut_u, true)
    end
  end
  redis.call('HDEL', jk, 'dr')
end

local function spend(b, id, op)
  local x = op[10]
  local hu, ht, su, st = x[1], x[2], x[3], x[4]
  local field = hold_field(id, op[4])
  local t, u, n = get_hold(b, field)
  if ht > 0 and t >= ht then
    put_hold(b, field, t - ht, u - hu, n - 1)
    add_held(b, -ht, -hu)
    add_spent(b, st, su, x[5] == 1)
    if (x[6] or 0) > 0 and x[5] ~= 1 then tighten(b, id, x[6], x[7] or 0) end
    return 1
  end
  local et, eu, en = get_hold(b, '~' .. field)
  if et > 0 and ht > 0 then
    -- The run lost its job with this call in flight: its bound (perhaps tightened since) was counted as
    -- estimated spend; the real figure replaces it.
    local take_t = math.min(ht, et)
    local take_u = math.min(hu, eu)
    put_hold(b, '~' .. field, et - take_t, eu - take_u, en - 1)
    add_spent(b, st - take_t, su - take_u, false)
    redis.call('HINCRBY', bkey(b), 'est_tokens', -take_t)
    redis.call('HINCRBYFLOAT', bkey(b), 'est_usd', -take_u)
    return 1
  end
  return 0  -- nothing held under that run (a repeated op): counted once already
end

local kinds = {done = done, fail = fail, defer = defer, part = keep_part, park = park, cancel = cancel,
  spend = spend, repack = repack}
for i, op in ipairs(ops) do
  local b, id = op[2], op[3]
  if live(b, op[12]) then
    bill(b, op)
    applied[i] = kinds[op[1]](b, id, op)
  else
    applied[i] = 0
  end
end
return {applied, messages}
