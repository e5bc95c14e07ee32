-- rate_release.lua: a booked slot whose request was never sent is given back. Its request and tokens
-- stay counted in the buckets and the log (other requests are already booked behind it: handing the
-- capacity back to the buckets would put two requests where the schedule has room for one); instead
-- the slot itself waits for the next request that fits it, until late_ms after it (taken later, it
-- would crowd the slots after it). Unused by then, it is forgotten: that only errs on the safe side.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] slot_ms: the slot the request was booked at
-- ARGV[3] tokens: the tokens booked with it
-- ARGV[4] late_ms: as for rate_acquire
--
-- Returns 1 if the slot can still be taken, else 0.
local slot, tokens, late = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
if redis.call('EXISTS', L.rate) == 0 or slot + late < now then return 0 end
local seq = redis.call('HINCRBY', L.rate, RT.seq, 1)
redis.call('ZREMRANGEBYSCORE', L.rate_holes, '-inf', '(' .. string.format('%d', now - late))
redis.call('ZADD', L.rate_holes, slot, string.format('%d:%d:%d', slot, tokens, seq))
redis.call('PEXPIRE', L.rate_holes, math.max(redis.call('PTTL', L.rate), slot - now + late + 1000))
return 1
