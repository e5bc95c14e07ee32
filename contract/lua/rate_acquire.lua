-- rate_acquire.lua: book the earliest slot for one more request, paced evenly and never over the
-- provider's limit in any window. Three rules, each on Redis' clock, shared by every worker:
--   * two token buckets (GCRA form: `rq` and `tk` in the rate hash are their theoretical arrival
--     times): refilled continuously at rpm/60 requests and tpm/60 tokens a second, holding at most a
--     burst (ARGV rpm_burst, tpm_burst); a request larger than the token burst waits for a full
--     bucket and leaves it in debt, so tokens still come at tpm/60 a second;
--   * the log of booked slots: no more than rpm requests / tpm tokens in any window_ms (the bucket
--     alone would let a fresh start carry a minute's worth plus its burst in the first minute);
--   * the shared 429 cooldown (rate_cooldown.lua moves the buckets past it: no refill is banked).
-- A slot given back unused (rate_release.lua) and still fresh is taken first: its request and tokens
-- are already in the buckets and the log, so taking it changes neither.
-- Slots are booked in order (`last`); whatever left the window before the new slot is forgotten, so
-- each request costs O(1) amortized.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] rpm: requests per minute (0: no limit)
-- ARGV[3] tpm: tokens per minute (0: no limit)
-- ARGV[4] tokens: this request's tokens (prompt + max_tokens, counted as the provider counts)
-- ARGV[5] window_ms: the provider's window plus a margin for requests sent a little late
-- ARGV[6] rpm_burst: requests the request bucket holds (>= 1)
-- ARGV[7] tpm_burst: tokens the token bucket holds (>= 1)
-- ARGV[8] late_ms: how long after its slot a given-back slot may still be taken
--
-- Returns RATE_SLOT (contract/schema.py): wait_ms, and slot_ms (Redis time).
local rpm, tpm, tokens, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rburst, tburst, late = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local start = now + math.max(0, redis.call('PTTL', L.cooldown))
local h = hmget(L.rate, RT.requests, RT.tokens, RT.last, RT.request_tat, RT.token_tat)
local n, t = tonumber(h[RT.requests] or '0'), tonumber(h[RT.tokens] or '0')
local last, rq, tk = tonumber(h[RT.last] or '0'), tonumber(h[RT.request_tat] or '0'), tonumber(h[RT.token_tat] or '0')
-- ms per request, ms per token
local rT = rpm > 0 and 60000 / rpm or 0
local tT = tpm > 0 and 60000 / tpm or 0

local function keep(until_ms)
  local ttl = math.max(redis.call('PTTL', L.rate), math.ceil(until_ms - now + window + 1000))
  for _, k in ipairs({L.rate, L.rate_log, L.rate_holes}) do
    if redis.call('EXISTS', k) == 1 then redis.call('PEXPIRE', k, ttl) end
  end
end

-- 1. The buckets, the order of bookings and the cooldown.
local slot = math.max(start, last)
if rpm > 0 then slot = math.max(slot, rq - (rburst - 1) * rT) end
if tpm > 0 then slot = math.max(slot, tk - (tburst - math.min(tokens, tburst)) * tT) end
slot = math.ceil(slot)

-- 2. A fresh given-back slot no later than that, holding enough tokens for this request.
redis.call('ZREMRANGEBYSCORE', L.rate_holes, '-inf', '(' .. string.format('%d', start - late))
local holes = redis.call('ZRANGEBYSCORE', L.rate_holes, '-inf', string.format('%d', slot), 'LIMIT', 0, 16)
for _, e in ipairs(holes) do
  local at, k = string.match(e, '^(%d+):(%d+):')
  at, k = tonumber(at), tonumber(k)
  if tpm == 0 or tokens <= k then
    redis.call('ZREM', L.rate_holes, e)
    local taken = math.max(at, start)
    return record(RS, {wait_ms = taken - now, slot_ms = taken})
  end
end

-- 3. The window: forget what left it, then wait for enough of it to leave.
local function head()
  local e = redis.call('LINDEX', L.rate_log, 0)
  if not e then return nil end
  local at, c, k = string.match(e, '^(%d+):(%d+):(%d+)$')
  return tonumber(at), tonumber(c), tonumber(k)
end

local function pop()
  local at, c, k = head()
  redis.call('LPOP', L.rate_log)
  n, t = n - k, t - c
  return at
end

while true do
  local at = head()
  if not at or at + window > slot then break end
  pop()
end
while (rpm > 0 and n + 1 > rpm) or (tpm > 0 and t + tokens > tpm) do
  if not head() then break end
  slot = math.max(slot, pop() + window)
end

if rpm > 0 then rq = math.max(rq, slot) + rT end
if tpm > 0 then tk = math.max(tk, slot) + tokens * tT end
redis.call('RPUSH', L.rate_log, string.format('%d:%d:1', slot, tokens))
redis.call('HSET', L.rate, RT.requests, n + 1, RT.tokens, t + tokens, RT.last, string.format('%d', slot),
  RT.request_tat, string.format('%.3f', rq), RT.token_tat, string.format('%.3f', tk))
keep(math.max(slot, rq, tk))
return record(RS, {wait_ms = slot - now, slot_ms = slot})
