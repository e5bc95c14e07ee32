-- rate_cooldown.lua: the provider answered 429 (or 503) and asked for a pause: every worker waits it
-- out. Only ever lengthens a cooldown another worker set. The buckets bank no refill over the pause:
-- the first requests after it get at most one burst, then the steady pace.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] ms: how long to pause
local ms = tonumber(ARGV[2])
if redis.call('PTTL', L.cooldown) < ms then
  redis.call('SET', L.cooldown, '1', 'PX', ms)
  if redis.call('EXISTS', L.rate) == 1 then
    local until_ms = now_ms() + ms
    local h = hmget(L.rate, RT.request_tat, RT.token_tat)
    redis.call('HSET', L.rate, RT.request_tat, string.format('%.3f', math.max(tonumber(h[RT.request_tat] or '0'), until_ms)),
      RT.token_tat, string.format('%.3f', math.max(tonumber(h[RT.token_tat] or '0'), until_ms)))
    redis.call('PEXPIRE', L.rate, math.max(redis.call('PTTL', L.rate), ms + 61000))
  end
end
return 1
