-- submitting.lua: a submit's lease on the batch it is storing chunks into. While it lives the batch is
-- not over, even when every job stored so far is final (a submit waiting for room under
-- SUMMARIZE_MAX_QUEUED can wait longer than the results' TTL): it would otherwise finish, expire, and
-- take the next chunk's jobs into a batch with no spec. A submit renews it as it goes and gives it back
-- at its end; one that went away lets it lapse, and the reaper then finishes the batch.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] gen: the batch generation the submit made or resumed
-- ARGV[4] lease_ms: how long the lease runs from now (Redis time); 0 gives it back
--
-- Returns 1, or 0 when the batch is gone (or was made again meanwhile).
local b, gen, lease = ARGV[2], ARGV[3], tonumber(ARGV[4])
if not live(b, gen) then return 0 end
local now = now_ms()
if lease > 0 then
  redis.call('HSET', bkey(b), B.submitting, now + lease)
  redis.call('ZADD', L.submits, now + lease, b)
else
  redis.call('HDEL', bkey(b), B.submitting)
  redis.call('ZREM', L.submits, b)
  maybe_finish(b, now)
end
return 1
