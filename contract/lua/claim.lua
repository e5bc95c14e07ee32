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
-- Returns {state, now_ms, jobs}: state = the batch's state ('stale': see gen), now_ms = Redis time; jobs[i] = {id, 'claimed', article, attempts,
-- unusable, deferrals, first_failure_ms, prompt_tokens, completion_tokens, partials (flat field/value
-- list of the parts of a long article summarized by earlier runs), cache key ('' for none), cost so far
-- (USD, '-1' when a price was unknown)} or
-- {id, why} where why is done, failed, cancelled, cached, waiting, packing, busy (another run holds it),
-- early (deferred, not due), paused, missing.
local b, step, msg, token, lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local fp, cache_ttl, to_pack, gen, rev = ARGV[7], tonumber(ARGV[8]), ARGV[9] == '1', ARGV[10], ARGV[11]
local now = now_ms()
local bv = redis.call('HMGET', bkey(b), 'gen', 'rev')
if bv[1] and gen ~= '' and (bv[1] ~= gen or (bv[2] or '0') ~= rev) then return {'stale', now, {}} end
local orphans = L.orphans .. step
-- The message arrived: it is not lost. Its queued time is how far the queue has come.
local queued_at = redis.call('ZSCORE', orphans, msg)
if queued_at then
  redis.call('ZREM', orphans, msg)
  if tonumber(queued_at) > tonumber(redis.call('HGET', L.hw, step) or '0') then
    redis.call('HSET', L.hw, step, queued_at)
  end
end
-- A queued job this run may take: answered from the cache, waiting for its twin's call, or claimed.
local function take(id, s)
  local jk, m = jkey(b, id), member(b, id)
  local key = ''
  if fp ~= '' then
    key = cache_key(fp, (article_of(b, id)))
    local ptr = cache_lookup(key, cache_ttl, now)
    local f = ptr and cached_record(ptr, key)
    if f then
      finalize_cached(b, id, s, f, now)
      return {id, 'cached'}
    end
    if to_pack and redis.call('HGET', jk, 'online') ~= '1' then
      to_packing(b, id, s, now)  -- twins of one pack share its line (worker/batchmode.py)
      return {id, 'packing'}
    end
    local leader = redis.call('GET', L.flight .. key)
    if leader and leader ~= m then
      move(b, s, 'waiting')
      redis.call('HSET', jk, 's', 'waiting', 'fk', key)
      redis.call('SADD', L.waiters .. key, m)
      redis.call('ZADD', L.due, now + lease, m)  -- the reaper looks again if the leader goes quiet
      return {id, 'waiting'}
    end
    redis.call('SET', L.flight .. key, m, 'PX', lease)
    redis.call('HSET', jk, 'fk', key)
  end
  if to_pack and redis.call('HGET', jk, 'online') ~= '1' then
    to_packing(b, id, s, now)
    return {id, 'packing'}
  end
  move(b, s, 'running')
  redis.call('HSET', jk, 's', 'running', 'tk', token, 'l', now + lease)
  redis.call('ZADD', L.due, now + lease, m)
  local h = redis.call('HMGET', jk, 'a', 'x', 'd', 'f', 'pt', 'ct', 'c')
  return {id, 'claimed', redis.call('GET', tkey(b, id)), h[1] or '0', h[2] or '0', h[3] or '0', h[4] or '0',
    h[5] or '0', h[6] or '0', redis.call('HGETALL', pkey(b, id)), key, h[7] or '0'}
end

local bstate = redis.call('HMGET', bkey(b), 'state', 'halt')
local state = bstate[1] or 'missing'
local jobs = {}
local ids = split(msg, L.msep)
for i = 2, #ids do
  local id = ids[i]
  local jk, s = jkey(b, id), status_of(b, id)
  local why = nil
  if not s then
    why = 'missing'
  elseif s == 'running' then
    if tonumber(redis.call('HGET', jk, 'l') or '0') > now then why = 'busy' end
  elseif s == 'deferred' then
    if tonumber(redis.call('ZSCORE', L.due, member(b, id)) or '0') > now then why = 'early' end
  elseif s ~= 'queued' then
    why = s
  end
  if not why and s == 'running' then
    -- Its lease lapsed before the reaper got to it: the run that had it is gone, and so are its holds.
    release_run(b, id)
    redis.call('HDEL', jk, 'tk', 'l')
  end
  if why then
    jobs[#jobs + 1] = {id, why}
  elseif state == 'cancelled' then
    finalize(b, id, s, 'cancelled', lua_final(b, id, 'cancelled', 'the batch was cancelled', 'Cancelled', now),
      false, now)
    jobs[#jobs + 1] = {id, 'cancelled'}
  elseif state == 'halted' then
    local err = 'batch halted by an earlier provider error: ' .. (bstate[2] or '')
    finalize(b, id, s, 'failed', lua_final(b, id, 'failed', err, 'ProviderRejected', now), true, now)
    jobs[#jobs + 1] = {id, 'failed'}
  elseif state == 'paused' then
    move(b, s, 'parked')
    redis.call('HSET', jk, 's', 'parked')
    redis.call('SADD', part(b, 'parked'), id)
    redis.call('ZREM', L.due, member(b, id))
    jobs[#jobs + 1] = {id, 'paused'}
  else
    jobs[#jobs + 1] = take(id, s)
  end
end
return {state, now, jobs}
