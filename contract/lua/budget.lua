-- budget.lua: before a call, hold its worst case (prompt + max_tokens, at the batch's price) against the
-- batch's budget; the call's `spend` op (settle.lua) then replaces the hold with what it really cost, so
-- the spend never exceeds the cap. When the next call does not fit, the batch pauses (reason budget):
-- its jobs wait, failed by nothing, until `summarize resume B` raises the cap.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] usd: the call's worst-case cost
-- ARGV[4] tokens: the call's worst-case tokens
--
-- Returns 1 when the call may go ahead, 0 when it must not (the batch is, or just became, paused or over).
local b, usd, tokens = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local bk = bkey(b)
local h = redis.call('HMGET', bk, 'state', 'budget_usd', 'budget_tokens', 'spent_usd', 'spent_tokens', 'held_usd',
  'held_tokens')
if h[1] ~= 'running' then return 0 end
local over_usd = h[2] and tonumber(h[4] or '0') + tonumber(h[6] or '0') + usd > tonumber(h[2])
local over_tokens = h[3] and tonumber(h[5] or '0') + tonumber(h[7] or '0') + tokens > tonumber(h[3])
if over_usd or over_tokens then
  redis.call('HSET', bk, 'state', 'paused', 'reason', 'budget')
  return 0
end
redis.call('HINCRBYFLOAT', bk, 'held_usd', usd)
redis.call('HINCRBY', bk, 'held_tokens', tokens)
return 1
