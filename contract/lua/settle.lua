-- settle.lua: store the outcomes of many runs at once (the worker's writer batches them). Billed
-- tokens and cost count whatever becomes of the job: the provider charged them.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] per_message: jobs per Celery message (for twins queued again when their leader did not answer)
-- ARGV[3] cache_ttl: seconds a cached answer is kept findable
-- ARGV[4] ops: msgpack array of ops, each laid out as contract/schema.py OP (read here as op[O.name]:
--         kind, batch, id, token, attempts, unusable, prompt_tokens, completion_tokens, cost_usd,
--         extra, cache_key, gen; each kind's extra as OF, OD, OP, OR, OS); an op whose batch generation (gen) is
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
--         the same permanent provider error (fail's extra signature; 0: never)
--
-- Returns SETTLE_REPLY (contract/schema.py): applied[i] is 1 or 0 (already settled, or another run holds
-- the job); messages are MESSAGE records to publish (twins whose leader did not answer).
local per, cache_ttl, halt_after = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local ops = cmsgpack.unpack(ARGV[4])
local now = now_ms()
local applied, messages = {}, {}

local function bill(b, op)
  local bk = bkey(b)
  if op[O.prompt_tokens] > 0 then redis.call('HINCRBY', bk, B.prompt_tokens, op[O.prompt_tokens]) end
  if op[O.completion_tokens] > 0 then redis.call('HINCRBY', bk, B.completion_tokens, op[O.completion_tokens]) end
  if op[O.unusable] > 0 then redis.call('HINCRBY', bk, B.unusable, op[O.unusable]) end
  if op[O.attempts] > 0 then redis.call('HINCRBY', bk, B.calls, op[O.attempts]) end
  if op[O.cost_usd] > 0 then redis.call('HINCRBYFLOAT', bk, B.cost_usd, op[O.cost_usd]) end
end

local function add_counts(jk, op)
  for _, name in ipairs({'attempts', 'unusable', 'prompt_tokens', 'completion_tokens'}) do
    if op[O[name]] > 0 then redis.call('HINCRBY', jk, H[name], op[O[name]]) end
  end
  -- A cost that was unknown stays unknown (-1) whatever comes after.
  local cost = op[O.cost_usd]
  if cost < 0 then
    redis.call('HSET', jk, H.cost, -1)
  elseif cost > 0 and tonumber(redis.call('HGET', jk, H.cost) or '0') >= 0 then
    redis.call('HINCRBYFLOAT', jk, H.cost, cost)
  end
end

-- The run (or the pack, in batch mode) holding the job is the one settling it.
local function holds(b, id, token)
  local h = hmget(jkey(b, id), H.status, H.token)
  local s = h[H.status]
  return (s == 'running' or s == 'packed') and h[H.token] == token, s
end

local function remember(b, id, op, record)
  local key = op[O.cache_key]
  if key and key ~= '' then cache_store(key, member(b, id), cache_ttl, now) end
  land(b, id, cmsgpack.unpack(record), now, per, messages)
end

local function done(b, id, op)
  local s = redis.call('HGET', jkey(b, id), H.status)
  if not s then
    local rec = redis.call('HGET', part(b, 'out'), id)
    if rec then
      if cmsgpack.unpack(rec)[F.status] ~= 'failed' then return 0 end
      -- A late result for a job that failed meanwhile: it was counted out of the backlog already.
      move(b, 'failed', 'done')
      redis.call('SREM', part(b, 'dead'), id)
      redis.call('HSET', part(b, 'out'), id, op[O.extra])
      redis.call('DEL', tkey(b, id))
      local f = cmsgpack.unpack(op[O.extra])
      if not flagged(f) then redis.call('HDEL', part(b, 'kept'), id) end
      count_flags(b, f[F.flags], 1)
      redis.call('XADD', part(b, 'events'), '*', 'id', id, 's', 'done')
      return 1
    end
    if redis.call('EXISTS', tkey(b, id)) == 0 then return 0 end
    s = 'queued'
  end
  remember(b, id, op, op[O.extra])
  local f = cmsgpack.unpack(op[O.extra])
  finalize(b, id, s, 'done', op[O.extra], flagged(f), now)
  count_flags(b, f[F.flags], 1)
  return 1
end

local function fail(b, id, op)
  local ok, s = holds(b, id, op[O.token])
  if not ok then return 0 end
  local x = op[O.extra]
  local record, halt, sig = x[OF.record], x[OF.halt], x[OF.signature] or ''
  local bk = bkey(b)
  if halt == '' and sig ~= '' and halt_after > 0 and tonumber(redis.call('HGET', bk, B.done) or '0') == 0 then
    -- The first calls of a batch all failing alike: the rest would too, one paid discovery at a time.
    local seen = redis.call('HGET', bk, B.same_error)
    if not seen then
      redis.call('HSET', bk, B.same_error, sig, B.same_errors, 1)
    elseif seen == sig then
      if redis.call('HINCRBY', bk, B.same_errors, 1) >= halt_after then
        halt = 'the first ' .. halt_after .. ' jobs all failed with the same error: ' .. sig
      end
    end
  end
  if halt ~= '' and redis.call('HGET', bk, B.state) == 'running' then
    redis.call('HSET', bk, B.state, 'halted', B.halt, halt)
  end
  land(b, id, nil, now, per, messages, cmsgpack.unpack(record))
  finalize(b, id, s, 'failed', record, true, now)
  return 1
end

-- Batch mode: a line that came back as an error, unusable, or never ran (expired, a failed batch) goes
-- into a later pack, or (extra's online == 1) online.
local function repack(b, id, op)
  local ok, s = holds(b, id, op[O.token])
  if not ok then return 0 end
  local jk, x = jkey(b, id), op[O.extra]
  add_counts(jk, op)
  if x[OR.error_type] ~= '' then  -- '' : no failure, only no room in that pack
    redis.call('HSET', jk, H.error_type, x[OR.error_type], H.error, string.sub(x[OR.error], 1, 200))
    redis.call('HINCRBY', jk, H.pack_tries, 1)
  end
  release_run(b, id)
  if x[OR.online] == 1 then
    move(b, s, 'queued')
    redis.call('HSET', jk, H.status, 'queued', H.online, '1')
    redis.call('HDEL', jk, H.token, H.lease)
    enqueue_messages(b, {id}, per, now, messages)
  else
    to_packing(b, id, s, now)
  end
  return 1
end

local function defer(b, id, op)
  if not holds(b, id, op[O.token]) then return 0 end
  local jk, x = jkey(b, id), op[O.extra]
  land(b, id, nil, now, per, messages)
  release_run(b, id)
  move(b, 'running', 'deferred')
  redis.call('HSET', jk, H.status, 'deferred', H.error_type, x[OD.error_type], H.error, string.sub(x[OD.error], 1, 200))
  redis.call('HDEL', jk, H.token, H.lease)
  add_counts(jk, op)
  -- A worker handing a job back on shutdown is no failure: it must not start the retry horizon.
  if x[OD.counts_as_failure] == 1 then
    redis.call('HSETNX', jk, H.first_failure, now)
    redis.call('HINCRBY', jk, H.deferrals, 1)
  end
  redis.call('ZADD', L.due, now + x[OD.delay_ms], member(b, id))
  return 1
end

local function keep_part(b, id, op)
  if not holds(b, id, op[O.token]) then return 0 end
  add_counts(jkey(b, id), op)
  local x = op[O.extra]
  redis.call('HSET', pkey(b, id), x[OP.key], x[OP.summary])
  return 1
end

local function park(b, id, op)
  if not holds(b, id, op[O.token]) then return 0 end
  local jk = jkey(b, id)
  land(b, id, nil, now, per, messages)
  release_run(b, id)
  redis.call('HDEL', jk, H.token, H.lease)
  add_counts(jk, op)
  redis.call('ZREM', L.due, member(b, id))
  if redis.call('HGET', bkey(b), B.state) ~= 'paused' then
    -- Resumed (or cancelled) since the worker looked: resume has walked the parked set already, so
    -- the job goes back on the queue (a cancelled batch's claim ends it there).
    move(b, 'running', 'queued')
    redis.call('HSET', jk, H.status, 'queued')
    enqueue_messages(b, {id}, per, now, messages)
    return 1
  end
  move(b, 'running', 'parked')
  redis.call('HSET', jk, H.status, 'parked')
  redis.call('SADD', part(b, 'parked'), id)
  return 1
end

local function cancel(b, id, op)
  local ok, s = holds(b, id, op[O.token])
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
  local dr = redis.call('HGET', jk, H.dead_runs)
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
  redis.call('HDEL', jk, H.dead_runs)
end

local function spend(b, id, op)
  local x = op[O.extra]
  local hu, ht, su, st = x[OS.held_usd], x[OS.held_tokens], x[OS.spent_usd], x[OS.spent_tokens]
  local estimated, save_t, save_u = x[OS.estimated] == 1, x[OS.save_tokens] or 0, x[OS.save_usd] or 0
  local field = hold_field(id, op[O.token])
  local t, u, n = get_hold(b, field)
  if ht > 0 and t >= ht then
    put_hold(b, field, t - ht, u - hu, n - 1)
    add_held(b, -ht, -hu)
    add_spent(b, st, su, estimated)
    if save_t > 0 and not estimated then tighten(b, id, save_t, save_u) end
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
    redis.call('HINCRBY', bkey(b), B.est_tokens, -take_t)
    redis.call('HINCRBYFLOAT', bkey(b), B.est_usd, -take_u)
    return 1
  end
  return 0  -- nothing held under that run (a repeated op): counted once already
end

local kinds = {done = done, fail = fail, defer = defer, part = keep_part, park = park, cancel = cancel,
  spend = spend, repack = repack}
for i, op in ipairs(ops) do
  local b, id = op[O.batch], op[O.id]
  if live(b, op[O.gen]) then
    bill(b, op)
    applied[i] = kinds[op[O.kind]](b, id, op)
  else
    applied[i] = 0
  end
end
return record(SR, {applied = applied, messages = messages})
