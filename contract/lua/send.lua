-- send.lua: the last word before a request leaves, taken after any wait for the limiter or a backoff,
-- on the state in Redis (never a worker's copy of it):
--   * the batch still exists in the generation the run was made for;
--   * the run still holds its job (its lease has not lapsed, nobody else took it): a run that lost its
--     job makes no further call, so map-reduce parts are never paid twice;
--   * the batch is running (not paused, cancelled or halted);
--   * with a budget, the call's worst case fits. A call that fits the budget only once calls already in
--     flight settle waits for them ('wait'); the batch pauses (reason budget) only when the call would not
--     fit with nothing else held (spent + its own bound > cap).
-- Every call that goes is held (per run, see _lib.lua drop_holds) until its spend op replaces the hold
-- with what it cost, budget or not: a budget given to a running batch (`resume --budget-tokens`) then
-- sees every call in flight and everything spent before it.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] gen: the batch generation of the run
-- ARGV[4] id: job id
-- ARGV[5] token: the run's token
-- ARGV[6] usd: the call's worst-case cost (-1: its price is unknown)
-- ARGV[7] tokens: the call's worst-case tokens (an upper bound: prompt bound + the completion room)
--
-- Returns SEND_REPLY (contract/schema.py): verdict is go, wait, paused, cancelled, halted, lost (the run no longer
-- holds the job) or gone (the batch no longer exists in that generation); detail is the halt message or
-- the pause reason ('held' for a go that holds the call's bound).
local b, gen, id, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local usd, tokens = tonumber(ARGV[6]), tonumber(ARGV[7])
local function verdict(v, detail) return record(SD, {verdict = v, detail = detail or ''}) end
local bk = bkey(b)
local h = hmget(bk, B.state, B.gen, B.halt, B.reason, B.budget_usd, B.budget_tokens, B.spent_usd,
  B.spent_tokens, B.held_usd, B.held_tokens)
local state = h[B.state]
if not state or (h[B.gen] or '') ~= gen then return verdict('gone') end
local j = hmget(jkey(b, id), H.status, H.token, H.lease)
if j[H.status] ~= 'running' or j[H.token] ~= token or tonumber(j[H.lease] or '0') <= now_ms() then
  return verdict('lost')
end
if state == 'halted' then return verdict('halted', h[B.halt]) end
if state ~= 'running' then return verdict(state, h[B.reason]) end

local spent_usd, spent_tokens = tonumber(h[B.spent_usd] or '0'), tonumber(h[B.spent_tokens] or '0')
local held_usd, held_tokens = tonumber(h[B.held_usd] or '0'), tonumber(h[B.held_tokens] or '0')
local cap_usd, cap_tokens = tonumber(h[B.budget_usd] or ''), tonumber(h[B.budget_tokens] or '')
local function pause(why)
  redis.call('HSET', bk, B.state, 'paused', B.reason, why)
  return verdict('paused', why)
end
if cap_usd or cap_tokens then
  if cap_usd and usd < 0 then return pause('budget') end  -- no price: a USD cap can't be kept
  local alone = (cap_usd and spent_usd + usd > cap_usd) or (cap_tokens and spent_tokens + tokens > cap_tokens)
  if alone then return pause('budget') end
  local with_others = (cap_usd and spent_usd + held_usd + usd > cap_usd)
    or (cap_tokens and spent_tokens + held_tokens + tokens > cap_tokens)
  if with_others then return verdict('wait') end
end
if usd < 0 then usd = 0 end
local field = hold_field(id, token)
local t, u, n = get_hold(b, field)
put_hold(b, field, t + tokens, u + usd, n + 1)
add_held(b, tokens, usd)
return verdict('go', 'held')
