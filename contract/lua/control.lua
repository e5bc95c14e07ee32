-- control.lua: pause, resume or cancel a batch, or change its budget. Safe to repeat; every worker sees
-- the new state within about a second (worker/batches.py). Resume republishes the parked jobs (the
-- caller walks the parked set with unpark.lua); cancel ends the jobs that have not started (the caller
-- walks the batch with cancel.lua).
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] action: pause | resume | cancel | budget
-- ARGV[4] budget_usd: a new cap in USD ('' keeps the one there is)
-- ARGV[5] budget_tokens: a new cap in tokens ('' keeps the one there is)
--
-- Returns CONTROL_REPLY (contract/schema.py): the batch's state and pause reason.
local b, action, usd, tokens = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local bk = bkey(b)
if redis.call('EXISTS', bk) == 0 then return redis.error_reply('NOBATCH ' .. b) end
if usd ~= '' then redis.call('HSET', bk, B.budget_usd, usd) end
if tokens ~= '' then redis.call('HSET', bk, B.budget_tokens, tokens) end
local state = redis.call('HGET', bk, B.state)
if action == 'pause' and state == 'running' then
  redis.call('HSET', bk, B.state, 'paused', B.reason, 'user')
elseif action == 'resume' and state == 'paused' then
  redis.call('HSET', bk, B.state, 'running')
  redis.call('HDEL', bk, B.reason)
elseif action == 'cancel' and state ~= 'cancelled' then
  redis.call('HSET', bk, B.state, 'cancelled')
  redis.call('HDEL', bk, B.reason)
end
local h = hmget(bk, B.state, B.reason)
return record(CT, {state = h[B.state], reason = h[B.reason] or ''})
