-- rate_settle.lua: the provider counted more tokens for a request than were booked for it; book the
-- difference at the request's slot so the window stays honest, and leave the token bucket that much
-- further in debt so the requests after it are paced for it. (Fewer is never refunded: providers
-- count prompt + max_tokens at admission, whatever the answer used.)
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] slot_ms: the slot the request was booked at
-- ARGV[3] tokens: tokens to add
-- ARGV[4] window_ms: as for rate_acquire
-- ARGV[5] tpm: tokens per minute in force (0: no token bucket to charge)
local slot, tokens, window, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if tokens <= 0 or redis.call('EXISTS', L.rate) == 0 then return 0 end
-- Appended out of time order it leaves the log later than it could: that only errs on the safe side.
redis.call('RPUSH', L.rate_log, string.format('%d:%d:0', slot, tokens))
redis.call('HINCRBY', L.rate, RT.tokens, tokens)
local now = now_ms()
local tk = tonumber(redis.call('HGET', L.rate, RT.token_tat) or '0')
if tpm > 0 then
  tk = math.max(tk, now) + tokens * 60000 / tpm
  redis.call('HSET', L.rate, RT.token_tat, string.format('%.3f', tk))
end
local keep = math.max(redis.call('PTTL', L.rate), slot - now + window + 1000, math.ceil(tk - now + window + 1000))
redis.call('PEXPIRE', L.rate, keep)
redis.call('PEXPIRE', L.rate_log, keep)
return 1
