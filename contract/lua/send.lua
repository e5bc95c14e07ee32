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
-- Returns {verdict, detail}: verdict is go, wait, paused, cancelled, halted, lost (the run no longer
-- holds the job) or gone (the batch no longer exists in that generation); detail is the halt message or
-- the pause reason ('held' for a go that holds the call's bound).
local b, gen, id, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local usd, tokens = tonumber(ARGV[6]), tonumber(ARGV[7])
local bk = bkey(b)
local h = redis.call('HMGET', bk, 'state', 'gen', 'halt', 'reason', 'budget_usd', 'budget_tokens', 'spent_usd',
  'spent_tokens', 'held_usd', 'held_tokens')
if not h[1] or (h[2] or '') ~= gen then return {'gone', ''} end
local j = redis.call('HMGET', jkey(b, id), 's', 'tk', 'l')
if j[1] ~= 'running' or j[2] ~= token or tonumber(j[3] or '0') <= now_ms() then return {'lost', ''} end
if h[1] == 'halted' then return {'halted', h[3] or ''} end
if h[1] ~= 'running' then return {h[1], h[4] or ''} end

local spent_usd, spent_tokens = tonumber(h[7] or '0'), tonumber(h[8] or '0')
local held_usd, held_tokens = tonumber(h[9] or '0'), tonumber(h[10] or '0')
local cap_usd, cap_tokens = tonumber(h[5] or ''), tonumber(h[6] or '')
local function pause(why)
  redis.call('HSET', bk, 'state', 'paused', 'reason', why)
  return {'paused', why}
end
if cap_usd or cap_tokens then
  if cap_usd and usd < 0 then return pause('budget') end  -- no price: a USD cap can't be kept
  local alone = (cap_usd and spent_usd + usd > cap_usd) or (cap_tokens and spent_tokens + tokens > cap_tokens)
  if alone then return pause('budget') end
  local with_others = (cap_usd and spent_usd + held_usd + usd > cap_usd)
    or (cap_tokens and spent_tokens + held_tokens + tokens > cap_tokens)
  if with_others then return {'wait', ''} end
end
if usd < 0 then usd = 0 end
local field = hold_field(id, token)
local t, u, n = get_hold(b, field)
put_hold(b, field, t + tokens, u + usd, n + 1)
add_held(b, tokens, usd)
return {'go', 'held'}
