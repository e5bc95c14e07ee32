-- invariants.lua: check, in one atomic look, what must hold of a batch at every instant (read only):
--   * its public counters equal the count of its jobs by status (bucket), and total = the ids listed;
--   * every budget hold belongs to a live run: the job is running under that run's token (or, batch
--     mode, the pack is one of the batch's), and held_tokens is the sum of the holds;
--   * nothing is held once no job of the batch is running or packed.
-- Tests assert it after every scenario (tests/conftest.py); JobStore.invariants runs it.
--
-- ARGV[1] layout: key names (Keys.layout)
-- ARGV[2] batch: batch id
-- ARGV[3] ids: msgpack array of the batch's job ids, read by the caller just before (so it can declare
--   their keys); a job listed since is looked at by pointer (contract/lua/_lib.lua follow)
--
-- Returns a list of violations (empty: all hold).
local b = ARGV[2]
local bk = bkey(b)
local out = {}
if redis.call('EXISTS', bk) == 0 then return out end
local counts = {queued = 0, running = 0, done = 0, failed = 0, cancelled = 0}
local ids = redis.call('LRANGE', part(b, 'ids'), 0, -1)
local live_runs = 0
for _, id in ipairs(ids) do
  local s = status_of(b, id)
  if not s then
    out[#out + 1] = 'job ' .. id .. ' is listed but has no state'
  else
    local k = bucket(s)
    counts[k] = counts[k] + 1
    if k == 'running' then live_runs = live_runs + 1 end
  end
end
local h = hmget(bk, B.total, B.queued, B.running, B.done, B.failed, B.cancelled, B.held_tokens)
if tonumber(h[B.total] or '0') ~= #ids then
  out[#out + 1] = 'total is ' .. (h[B.total] or 'nil') .. ' but ' .. #ids .. ' jobs are listed'
end
for _, name in ipairs({'queued', 'running', 'done', 'failed', 'cancelled'}) do
  if tonumber(h[B[name]] or '0') ~= counts[name] then
    out[#out + 1] = name .. ' is ' .. (h[B[name]] or 'nil') .. ' but ' .. counts[name] .. ' jobs are ' .. name
  end
end
local held = 0
local holds = redis.call('HGETALL', part(b, 'holds'))
for i = 1, #holds, 2 do
  local field = holds[i]
  if string.sub(field, 1, 1) ~= '~' then
    local t = tonumber(string.match(holds[i + 1], '^(%-?%d+):'))
    held = held + t
    local id, token = unmember(field)
    if id == '' then
      if redis.call('SISMEMBER', part(b, 'packs'), token) == 0 then
        out[#out + 1] = 'pack ' .. token .. ' holds ' .. t .. ' tokens but is not one of the batch'
      end
    else
      local j = hmget(jkey(b, id), H.status, H.token)
      if j[H.status] ~= 'running' or j[H.token] ~= token then
        out[#out + 1] = 'run ' .. token .. ' of job ' .. id .. ' holds ' .. t .. ' tokens but does not hold the job ('
          .. tostring(j[H.status]) .. ')'
      end
    end
  end
end
if held ~= tonumber(h[B.held_tokens] or '0') then
  out[#out + 1] = 'held_tokens is ' .. (h[B.held_tokens] or 'nil') .. ' but the holds add up to ' .. held
end
if live_runs == 0 and held ~= 0 then
  out[#out + 1] = held .. ' tokens held with no job running'
end
return out
