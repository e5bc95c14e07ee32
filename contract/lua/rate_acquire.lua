-- rate_acquire.lua: book the earliest slot at which one more request keeps every provider limit in
-- any window: RPM counts requests, TPM counts prompt + max_tokens, as providers count at admission.
-- The log holds what was booked; whatever left the window before the new slot is forgotten (later
-- slots are never earlier), so each request costs O(1) amortized. Slots respect a 429's cooldown.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] rpm: requests per window (0: no limit)
-- ARGV[3] tpm: tokens per window (0: no limit)
-- ARGV[4] tokens: this request's tokens (prompt + max_tokens)
-- ARGV[5] window_ms: the provider's window plus a margin for requests sent a little late
--
-- Returns {wait_ms, slot_ms} (Redis time).
local rpm, tpm, tokens, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local cool = math.max(0, redis.call('PTTL', L.cooldown))
local h = redis.call('HMGET', L.rate, 'n', 't', 'last')
local n, t = tonumber(h[1] or '0'), tonumber(h[2] or '0')
local slot = math.max(now + cool, tonumber(h[3] or '0'))

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
redis.call('RPUSH', L.rate_log, string.format('%d:%d:1', slot, tokens))
redis.call('HSET', L.rate, 'n', n + 1, 't', t + tokens, 'last', slot)
local keep = slot - now + window + 1000
redis.call('PEXPIRE', L.rate, keep)
redis.call('PEXPIRE', L.rate_log, keep)
return {slot - now, slot}
