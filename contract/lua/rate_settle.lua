-- rate_settle.lua: the provider counted more tokens for a request than were booked for it; book the
-- difference at the request's slot so the window stays honest. (Fewer is never refunded: providers
-- count prompt + max_tokens at admission, whatever the answer used.)
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] slot_ms: the slot the request was booked at
-- ARGV[3] tokens: tokens to add
-- ARGV[4] window_ms: as for rate_acquire
local slot, tokens, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tokens <= 0 or redis.call('EXISTS', L.rate) == 0 then return 0 end
-- Appended out of time order it leaves the log later than it could: that only errs on the safe side.
redis.call('RPUSH', L.rate_log, string.format('%d:%d:0', slot, tokens))
redis.call('HINCRBY', L.rate, 't', tokens)
local keep = math.max(redis.call('PTTL', L.rate), slot - now_ms() + window + 1000)
redis.call('PEXPIRE', L.rate, keep)
redis.call('PEXPIRE', L.rate_log, keep)
return 1
