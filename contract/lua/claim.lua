-- claim.lua: take the jobs of one message for a run. A job is taken by one run at a time however often
-- its message is delivered; a cancelled or halted batch's jobs are settled here without any LLM call,
-- and a paused batch's jobs are parked (they hold no worker slot) until it is resumed.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] step: kombu priority step the message was published with
-- ARGV[4] message: the message as registered in the orphans set (batch \x1f job id \x1f job id ...)
-- ARGV[5] token: this run's token (a renewal or result must bring it back)
-- ARGV[6] lease_ms: how long the run holds its jobs without renewing
-- ARGV[7] cache_fp: fingerprint of what shapes the batch's answers (model, base URL, prompt, schema,
--         words, temperature), '' when the batch does not use the cache
-- ARGV[8] cache_ttl: seconds a cached answer is looked up for
-- ARGV[9] to_pack: '1' for a batch-mode batch: its jobs wait for a provider batch instead of running
-- ARGV[10] gen: the batch generation the caller's spec belongs to; another one (the batch was purged
--          and made again) claims nothing and answers state 'stale', so the caller reads the spec again
--          ('' : no check, for tools that read the spec themselves); with it, the spec's revision
-- ARGV[11] rev: the spec revision the caller's copy is of (`summarize retry --model` changes the spec)
--
-- With a cache fingerprint, a job whose answer is cached is done at once (0 calls), and a job whose twin
-- is being summarized right now waits for it (status waiting: no slot, no call) instead of calling.
-- Returns a CR record (contract/schema.py CLAIM_REPLY: state, now_ms, jobs): state = the batch's state
-- ('stale': see gen), now_ms = Redis time; each job a C record (CLAIMED): {id, 'claimed', article, attempts,
-- unusable, deferrals, first_failure_ms, prompt_tokens, completion_tokens, partials (flat field/value
-- list of the parts of a long article summarized by earlier runs), cache key ('' for none), cost so far
-- (USD, '-1' when a price was unknown)} or
-- {id, why} where why is done, failed, cancelled, cached, waiting, packing, busy (another run holds it),
-- early (deferred, not due), paused, missing.
local b, step, msg, token, lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local fp, cache_ttl, to_pack, gen, rev = ARGV[7], tonumber(ARGV[8]), ARGV[9] == '1', ARGV[10], ARGV[11]
local now = now_ms()
local bv = hmget(bkey(b), B.gen, B.rev)
if bv[B.gen] and gen ~= '' and (bv[B.gen] ~= gen or (bv[B.rev] or '0') ~= rev) then
  return record(CR, {state = 'stale', now_ms = now, jobs = {}})
end
local orphans = orphans_key(step)
-- The message arrived: it is not lost. Its queued time is how far the queue has come.
local queued_at = redis.call('ZSCORE', orphans, msg)
if queued_at then
  redis.call('ZREM', orphans, msg)
  if tonumber(queued_at) > tonumber(redis.call('HGET', L.hw, step) or '0') then
    redis.call('HSET', L.hw, step, queued_at)
  end
end
-- A queued job this run may take: answered from the cache, waiting for its twin's call, or claimed.
local function skip(id, why) return record(C, {id = id, why = why}) end

local function take(id, s)
  local jk, m = jkey(b, id), member(b, id)
  local key = ''
  if fp ~= '' then
    key = cache_key(fp, (article_of(b, id)))
    local ptr = cache_lookup(key, cache_ttl, now)
    local f = ptr and cached_record(ptr, key)
    if f then
      finalize_cached(b, id, s, f, now)
      return skip(id, 'cached')
    end
    if to_pack and redis.call('HGET', jk, H.online) ~= '1' then
      to_packing(b, id, s, now)  -- twins of one pack share its line (worker/batchmode.py)
      return skip(id, 'packing')
    end
    local leader = redis.call('GET', flight_key(key))
    if leader and leader ~= m then
      move(b, s, 'waiting')
      redis.call('HSET', jk, H.status, 'waiting', H.flight, key)
      redis.call('SADD', waiters_key(key), m)
      redis.call('ZADD', L.due, now + lease, m)  -- the reaper looks again if the leader goes quiet
      return skip(id, 'waiting')
    end
    redis.call('SET', flight_key(key), m, 'PX', lease)
    redis.call('HSET', jk, H.flight, key)
  end
  if to_pack and redis.call('HGET', jk, H.online) ~= '1' then
    to_packing(b, id, s, now)
    return skip(id, 'packing')
  end
  move(b, s, 'running')
  redis.call('HSET', jk, H.status, 'running', H.token, token, H.lease, now + lease)
  redis.call('ZADD', L.due, now + lease, m)
  local h = hmget(jk, H.attempts, H.unusable, H.deferrals, H.first_failure, H.prompt_tokens, H.completion_tokens,
    H.cost)
  return record(C, {id = id, why = 'claimed', article = redis.call('GET', tkey(b, id)),
    attempts = h[H.attempts] or '0', unusable = h[H.unusable] or '0', deferrals = h[H.deferrals] or '0',
    first_failure_ms = h[H.first_failure] or '0', prompt_tokens = h[H.prompt_tokens] or '0',
    completion_tokens = h[H.completion_tokens] or '0', partials = redis.call('HGETALL', pkey(b, id)),
    cache_key = key, cost_usd = h[H.cost] or '0'})
end

local bstate = hmget(bkey(b), B.state, B.halt)
local state = bstate[B.state] or 'missing'
local jobs = {}
local ids = split(msg, L.msep)
for i = 2, #ids do
  local id = ids[i]
  local jk, s = jkey(b, id), status_of(b, id)
  local why = nil
  if not s then
    why = 'missing'
  elseif s == 'running' then
    if tonumber(redis.call('HGET', jk, H.lease) or '0') > now then why = 'busy' end
  elseif s == 'deferred' then
    if tonumber(redis.call('ZSCORE', L.due, member(b, id)) or '0') > now then why = 'early' end
  elseif s ~= 'queued' then
    why = s
  end
  if not why and s == 'running' then
    -- Its lease lapsed before the reaper got to it: the run that had it is gone, and so are its holds.
    release_run(b, id)
    redis.call('HDEL', jk, H.token, H.lease)
  end
  if why then
    jobs[#jobs + 1] = skip(id, why)
  elseif state == 'cancelled' then
    finalize(b, id, s, 'cancelled', lua_final(b, id, 'cancelled', 'the batch was cancelled', 'Cancelled', now),
      false, now)
    jobs[#jobs + 1] = skip(id, 'cancelled')
  elseif state == 'halted' then
    local err = 'batch halted by an earlier provider error: ' .. (bstate[B.halt] or '')
    finalize(b, id, s, 'failed', lua_final(b, id, 'failed', err, 'ProviderRejected', now), true, now)
    jobs[#jobs + 1] = skip(id, 'failed')
  elseif state == 'paused' then
    move(b, s, 'parked')
    redis.call('HSET', jk, H.status, 'parked')
    redis.call('SADD', part(b, 'parked'), id)
    redis.call('ZREM', L.due, member(b, id))
    jobs[#jobs + 1] = skip(id, 'paused')
  else
    jobs[#jobs + 1] = take(id, s)
  end
end
return record(CR, {state = state, now_ms = now, jobs = jobs})
