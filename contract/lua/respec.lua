-- respec.lua: change a halted or failed batch's spec for `summarize retry` (another model, fallback,
-- prices). Jobs already done keep the model that wrote them. The spec's revision (`rev`) goes up, so
-- every worker's copy of the old spec is dropped at its next claim (claim.lua answers 'stale').
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] spec: the new spec as canonical JSON (contract/spec.py)
--
-- Returns the new revision, or an error NOBATCH.
local b, spec = ARGV[2], ARGV[3]
local bk = bkey(b)
if redis.call('HEXISTS', bk, B.spec) == 0 then return redis.error_reply('NOBATCH ' .. b) end
redis.call('HSET', bk, B.spec, spec)
return redis.call('HINCRBY', bk, B.rev, 1)
