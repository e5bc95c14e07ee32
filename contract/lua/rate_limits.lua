-- rate_limits.lua: record the limits this worker was started with and return the strictest of every
-- live worker's, so a worker started without limits still obeys the shared schedule.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] worker: this worker process's name
-- ARGV[3] rpm: its own RPM (0: none)
-- ARGV[4] tpm: its own TPM (0: none)
-- ARGV[5] ttl_ms: how long the entry lives without being refreshed
--
-- Returns RATE_LIMITS_REPLY (contract/schema.py): the rpm and tpm in force (0: no limit).
local now = now_ms()
redis.call('HSET', L.limits, ARGV[2], string.format('%d:%d:%d', tonumber(ARGV[3]), tonumber(ARGV[4]),
  now + tonumber(ARGV[5])))
local rpm, tpm = 0, 0
local all = redis.call('HGETALL', L.limits)
for i = 1, #all, 2 do
  local r, t, until_ms = string.match(all[i + 1], '^(%d+):(%d+):(%d+)$')
  if not until_ms or tonumber(until_ms) < now then
    redis.call('HDEL', L.limits, all[i])
  else
    r, t = tonumber(r), tonumber(t)
    if r > 0 and (rpm == 0 or r < rpm) then rpm = r end
    if t > 0 and (tpm == 0 or t < tpm) then tpm = t end
  end
end
return record(RL, {rpm = rpm, tpm = tpm})
