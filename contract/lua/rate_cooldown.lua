-- rate_cooldown.lua: the provider answered 429 and asked for a pause: every worker waits it out.
-- Only ever lengthens a cooldown another worker set.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] ms: how long to pause
if redis.call('PTTL', L.cooldown) < tonumber(ARGV[2]) then
  redis.call('SET', L.cooldown, '1', 'PX', ARGV[2])
end
return 1
