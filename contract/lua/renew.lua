-- renew.lua: extend the leases of every job one worker process holds, in one call.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] lease_ms: the new lease runs this long from now (Redis time)
-- ARGV[3] held: msgpack array of {batch, id, token}
--
-- Returns the indexes (1-based) of the jobs that are no longer this run's (reclaimed or settled).
local lease = tonumber(ARGV[2])
local held = cmsgpack.unpack(ARGV[3])
local until_ms = now_ms() + lease
local lost = {}
for i, h in ipairs(held) do
  local b, id, token = h[HD.batch], h[HD.id], h[HD.token]
  local jk = jkey(b, id)
  local cur = hmget(jk, H.status, H.token, H.flight)
  if cur[H.status] == 'running' and cur[H.token] == token then
    redis.call('HSET', jk, H.lease, until_ms)
    redis.call('ZADD', L.due, 'XX', until_ms, member(b, id))
    -- A leader's flight lives as long as its lease: its twins wait for it, not for a dead worker.
    if cur[H.flight] then redis.call('PEXPIRE', flight_key(cur[H.flight]), lease) end
  else
    lost[#lost + 1] = i
  end
end
return lost
