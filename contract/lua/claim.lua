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
--
-- Returns {state, now_ms, jobs}: state = the batch's state, now_ms = Redis time; jobs[i] = {id, 'claimed', article, attempts,
-- unusable, deferrals, first_failure_ms, prompt_tokens, completion_tokens, partials (flat field/value
-- list of the parts of a long article summarized by earlier runs)} or {id, why} where why is done,
-- failed, cancelled, busy (another run holds it), early (deferred, not due), paused, missing.
local b, step, msg, token, lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local now = now_ms()
local orphans = L.orphans .. step
-- The message arrived: it is not lost. Its queued time is how far the queue has come.
local queued_at = redis.call('ZSCORE', orphans, msg)
if queued_at then
  redis.call('ZREM', orphans, msg)
  if tonumber(queued_at) > tonumber(redis.call('HGET', L.hw, step) or '0') then
    redis.call('HSET', L.hw, step, queued_at)
  end
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
    redis.call('HSET', jk, 's', 'parked')
    redis.call('SADD', part(b, 'parked'), id)
    redis.call('ZREM', L.due, member(b, id))
    jobs[#jobs + 1] = {id, 'paused'}
  else
    move(b, s, 'running')
    redis.call('HSET', jk, 's', 'running', 'tk', token, 'l', now + lease)
    redis.call('ZADD', L.due, now + lease, member(b, id))
    local h = redis.call('HMGET', jk, 'a', 'x', 'd', 'f', 'pt', 'ct')
    jobs[#jobs + 1] = {id, 'claimed', redis.call('GET', tkey(b, id)), h[1] or '0', h[2] or '0', h[3] or '0',
      h[4] or '0', h[5] or '0', h[6] or '0', redis.call('HGETALL', pkey(b, id))}
  end
end
return {state, now, jobs}
