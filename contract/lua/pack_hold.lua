-- pack_hold.lua: (batch mode) before a pack is sent, hold its worst case against the batch's budget,
-- under the pack's own field of the batch's holds (see _lib.lua); the pack's `spend` op (settle.lua,
-- id '' and token = pack id) then replaces the hold with what it really cost. When the pack does not
-- fit, the batch pauses (reason budget) until `summarize resume B` raises the cap. (Online calls hold
-- in send.lua.)
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] pack: pack id
-- ARGV[4] usd: the pack's worst-case cost
-- ARGV[5] tokens: the pack's worst-case tokens
--
-- Returns 1 when the call may go ahead, 0 when it must not (the batch is, or just became, paused or over).
local b, pack, usd, tokens = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
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
local field = hold_field('', pack)
local t, u = get_hold(b, field)
put_hold(b, field, t + tokens, u + usd)
add_held(b, tokens, usd)
return 1
