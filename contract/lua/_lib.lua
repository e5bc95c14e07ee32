-- _lib.lua: helpers prepended to every script by contract/scripts.py. Every script's ARGV[1] (Script.call)
-- holds `s`, the layout (separators, where each part of a batch, job or pack sits in KEYS, pointer
-- prefixes), and `i`, which KEYS entry is which: every key a script names is declared in KEYS by its
-- caller (contract/keys.py Declared). The deployment's keys (`L.due`, ...) are bound here to theirs.
local A = cjson.decode(ARGV[1])
local L, I = A.s, A.i
for name, i in pairs(I.g) do L[name] = KEYS[i] end

local function now_ms()
  local sec, usec = unpack(redis.call('TIME'))
  return tonumber(sec) * 1000 + math.floor(tonumber(usec) / 1000)
end

-- HMGET by name: field -> value (nil when absent), so a reply is never read by position.
local function hmget(key, ...)
  local names = {...}
  local values = redis.call('HMGET', key, unpack(names))
  local out = {}
  for i, name in ipairs(names) do out[name] = values[i] end
  return out
end

-- The batch and job id of a member string (`batch\x1fjob`).
local function unmember(m)
  local at = string.find(m, L.msep, 1, true)
  return string.sub(m, 1, at - 1), string.sub(m, at + #L.msep)
end

-- The one place a key name is built: a key reached by following a pointer the script itself read (a
-- cached record in another batch, a twin's job, a member of the due set), which no caller could declare.
-- All keys share one hash tag, so on a Cluster it is in the script's slot all the same; `strict` (tests)
-- refuses it. docs/scale.md lists where this happens and why.
local function follow(kind, ident, suffix)
  if A.strict then error('UNDECLARED ' .. kind .. ' ' .. ident) end
  return L.ptr[kind] .. ident .. (suffix or '')
end

-- The key a caller declared for `ident` under index I[index] (plus `offset` for a record's parts), else followed.
local function declared(index, kind, ident, offset, suffix)
  local i = I[index][ident]
  if i then return KEYS[i + (offset or 0)] end
  return follow(kind, ident, suffix)
end

local function bkey(b) return declared('b', 'b', b) end
local function part(b, name) return declared('b', 'b', b, L.parts[name], L.ptr.parts[name]) end
local function job_key(b, id, offset, kind)
  local i = I.j[b .. L.msep .. id]
  if i then return KEYS[i + offset] end
  return follow(kind, b .. L.sep .. id)
end
local function jkey(b, id) return job_key(b, id, 0, 'j') end
local function tkey(b, id) return job_key(b, id, 1, 't') end
local function pkey(b, id) return job_key(b, id, 2, 'p') end
-- A pack's journal (name nil) or one of its parts ('jobs', 'twins').
local function pack_key(pk, name)
  return declared('pk', 'pack', pk, name and L.pack_parts[name] or 0, name and L.ptr.pack_parts[name])
end
local function orphans_key(step)
  local i = I.orphans[tostring(step)]
  if not i then error('UNDECLARED orphans ' .. tostring(step)) end
  return KEYS[i]
end
local function cache_week(w) return declared('cache', 'cache', tostring(w)) end
local function flight_key(k) return declared('flight', 'flight', k) end
local function waiters_key(k) return declared('waiters', 'waiters', k) end
local function enq_key(scope) return declared('enq', 'enq', scope) end
local function member(b, id) return b .. L.msep .. id end
-- A pack's enqueued tokens given back to its (endpoint, model) and to the fleet's total, once: as the pack
-- ends (pack_state) or goes with a purged batch (purge).
local function release_enqueued(key)
  local h = hmget(key, PK.enq, PK.scope)
  if h[PK.enq] then
    redis.call('DECRBY', enq_key(h[PK.scope]), tonumber(h[PK.enq]))
    redis.call('DECRBY', L.packs_tokens, tonumber(h[PK.enq]))
    redis.call('HDEL', key, PK.enq)
  end
end

local function split(s, sep)
  local out, from = {}, 1
  while true do
    local at = string.find(s, sep, from, true)
    if not at then out[#out + 1] = string.sub(s, from); return out end
    out[#out + 1] = string.sub(s, from, at - 1)
    from = at + #sep
  end
end

-- A status's public counter: deferred, waiting, parked and packing jobs count as queued.
local function bucket(s)
  if s == 'running' or s == 'done' or s == 'failed' or s == 'cancelled' then return s end
  if s == 'packed' then return 'running' end  -- sent in a provider batch (batch mode)
  return 'queued'
end

-- Every status change of a job goes through here: the batch's public counters follow its status.
local function move(b, from, to)
  local f, t = bucket(from), bucket(to)
  if f ~= t then
    redis.call('HINCRBY', bkey(b), f, -1)
    redis.call('HINCRBY', bkey(b), t, 1)
  end
end

local function batch_keys(b)
  local out = {bkey(b)}
  for name in pairs(L.parts) do out[#out + 1] = part(b, name) end
  return out
end

-- ---- budget holds ---------------------------------------------------------------------------------
-- A run's calls in flight hold their worst case against the batch's budget: one field of the batch's
-- `holds` hash per run (`job\x1ftoken` -> `tokens:usd`), summed in the batch hash's held_tokens and
-- held_usd. A hold lives exactly as long as the run that took it: the run's own `spend` op turns it
-- into what the call really cost; a run that loses its job (lease lapsed, settled by another run)
-- leaves its holds to `drop_holds`, which counts them as spent at their bound (the calls may have been
-- billed, and "never overspent" needs the bound) and marks them estimated (`~job\x1ftoken`) so that a
-- late spend op of that run corrects the estimate to the real figure, once.

local function hold_field(id, token) return id .. L.msep .. token end

-- A hold's value: `tokens:usd:calls` (calls: how many calls it covers; packs leave it out).
local function get_hold(b, field)
  local v = redis.call('HGET', part(b, 'holds'), field)
  if not v then return 0, 0, 0 end
  local t, u, n = string.match(v, '^(%-?%d+):([^:]+):?(%-?%d*)$')
  return tonumber(t), tonumber(u), tonumber(n) or 0
end

local function put_hold(b, field, t, u, n)
  if t <= 0 and u <= 1e-9 then
    redis.call('HDEL', part(b, 'holds'), field)
  else
    redis.call('HSET', part(b, 'holds'), field, string.format('%d:%.17g:%d', t, u, math.max(0, n or 0)))
  end
end

local function add_held(b, t, u)
  local bk = bkey(b)
  if t ~= 0 then redis.call('HINCRBY', bk, B.held_tokens, t) end
  if u ~= 0 then redis.call('HINCRBYFLOAT', bk, B.held_usd, u) end
end

local function add_spent(b, t, u, estimated)
  local bk = bkey(b)
  if t ~= 0 then redis.call('HINCRBY', bk, B.spent_tokens, t) end
  if u ~= 0 then redis.call('HINCRBYFLOAT', bk, B.spent_usd, u) end
  if estimated then
    if t ~= 0 then redis.call('HINCRBY', bk, B.est_tokens, t) end
    if u ~= 0 then redis.call('HINCRBYFLOAT', bk, B.est_usd, u) end
  end
end

-- The run `token` no longer holds job `id`: what its calls in flight hold becomes estimated spend.
-- The job's hash remembers the runs it lost (`dr`), so that the next run's identical request can
-- tighten their estimates (settle.lua spend: the provider's count of the same prompt).
local function drop_holds(b, id, token)
  if not token or token == '' then return end
  local field = hold_field(id, token)
  local t, u, n = get_hold(b, field)
  if t == 0 and u == 0 then return end
  put_hold(b, field, 0, 0, 0)
  add_held(b, -t, -u)
  add_spent(b, t, u, true)
  local et, eu, en = get_hold(b, '~' .. field)
  put_hold(b, '~' .. field, et + t, eu + u, en + n)
  local jk = jkey(b, id)
  if redis.call('EXISTS', jk) == 1 then
    local dr = redis.call('HGET', jk, H.dead_runs)
    redis.call('HSET', jk, H.dead_runs, dr and (dr .. ' ' .. token) or token)
  end
end

-- Whoever holds job `id` now (its hash's token) gives it up.
local function release_run(b, id)
  drop_holds(b, id, redis.call('HGET', jkey(b, id), H.token))
end

-- A batch op may touch only the generation of the batch it was made for: a batch purged (or expired)
-- and made again under the same id is another batch, and one that no longer exists gets no writes.
-- (Batch mode's ops carry no generation yet: for them the batch must only exist.)
local function live(b, gen)
  local g = redis.call('HGET', bkey(b), B.gen)
  if not g then return false end
  return gen == nil or gen == '' or g == gen
end

-- Results are kept for the TTL after the batch is over; until then nothing of it expires.
-- The TTL is the batch's own (`ttl`, set by the submit from SUMMARIZE_RESULT_TTL).
-- A submit still storing chunks holds a lease on its batch (`submitting`, Redis time): the batch is not
-- over until that lease is given back or lapses (the reaper then finishes it).
local function maybe_finish(b, now)
  local h = hmget(bkey(b), B.queued, B.running, B.ttl, B.submitting)
  if tonumber(h[B.submitting] or '0') > now then return end
  if tonumber(h[B.queued] or '0') <= 0 and tonumber(h[B.running] or '0') <= 0 then
    redis.call('HSET', bkey(b), B.finished, now)
    local ttl = tonumber(h[B.ttl] or '604800')
    for _, k in ipairs(batch_keys(b)) do redis.call('EXPIRE', k, ttl) end
  end
end

-- New or re-driven work in a finished batch: its keys are kept again.
local function unfinish(b)
  if redis.call('HEXISTS', bkey(b), B.finished) == 1 then
    for _, k in ipairs(batch_keys(b)) do redis.call('PERSIST', k) end
    redis.call('HDEL', bkey(b), B.finished)
  end
end

-- The job's status: its hash's `s`, or 'queued' for a job never taken (only its text exists), or its
-- final record's status, or false when the job does not exist.
local function status_of(b, id)
  local s = redis.call('HGET', jkey(b, id), H.status)
  if s then return s end
  local rec = redis.call('HGET', part(b, 'out'), id)
  if rec then return cmsgpack.unpack(rec)[F.status] end
  if redis.call('EXISTS', tkey(b, id)) == 1 then return 'queued' end
  return false
end

-- Digest and origin of a job's article (what its final record keeps of it).
local function article_of(b, id)
  local blob = redis.call('GET', tkey(b, id)) or redis.call('HGET', part(b, 'kept'), id)
  if not blob then return '', '' end
  local article = cmsgpack.unpack(blob)
  return article[AR.digest], article[AR.origin]
end

-- A positional record of `layout` (one of contract/schema.py's, e.g. C) from its values by name. The
-- values given must be its first fields, with no gap: a table with holes would not pack as an array.
local function record(layout, v)
  local rec = {}
  for name, i in pairs(layout) do rec[i] = v[name] end
  return rec
end

-- A final record (contract/schema.py FINAL) from its fields by name: the one place Lua builds one.
-- Fields not given are empty (FE: '', 0, false; cost -1, unknown).
local function pack_final(v)
  local full = {}
  for name in pairs(F) do
    if v[name] == nil then full[name] = FE[name] else full[name] = v[name] end
  end
  return cmsgpack.pack(record(F, full))
end

-- The final record of a job settled inside Redis (cancelled, or failed by a halt): its counts so far.
local function lua_final(b, id, status, err, etype, now)
  local digest, origin = article_of(b, id)
  local h = hmget(jkey(b, id), H.attempts, H.unusable, H.prompt_tokens, H.completion_tokens)
  return pack_final({status = status, digest = digest, origin = origin, error = err, error_type = etype,
    prompt_tokens = tonumber(h[H.prompt_tokens] or '0'), completion_tokens = tonumber(h[H.completion_tokens] or '0'),
    attempts = tonumber(h[H.attempts] or '0'), unusable = tonumber(h[H.unusable] or '0'), finished_ms = now})
end

-- Store a final record and drop everything the unfinished job had. `keep_text` keeps the article
-- of a failed job so `summarize retry` can send it again: in the batch's `kept` hash, which expires
-- with the batch (a text key of its own would outlive it).
local function finalize(b, id, from, status, record, keep_text, now)
  move(b, from, status)
  release_run(b, id)
  redis.call('HSET', part(b, 'out'), id, record)
  redis.call('DEL', jkey(b, id), pkey(b, id))
  if keep_text then
    local blob = redis.call('GET', tkey(b, id))
    if blob then redis.call('HSET', part(b, 'kept'), id, blob) end
  end
  redis.call('DEL', tkey(b, id))
  redis.call('ZREM', L.due, member(b, id))
  redis.call('SREM', part(b, 'parked'), id)
  if status == 'failed' then redis.call('SADD', part(b, 'dead'), id) end
  redis.call('XADD', part(b, 'events'), '*', 'id', id, 's', status)
  redis.call('DECR', L.backlog)
  maybe_finish(b, now)
end

-- The batch's counts of flagged done jobs (contract/checks.py): `flagged`, and one a check (FB: the flag
-- of FB[name] is bit FB[name] - 1 of the record's flags). `delta` 1 as a flagged record lands, -1 as
-- `retry --flagged` takes it back.
local function count_flags(b, flags, delta)
  flags = tonumber(flags) or 0
  if flags <= 0 then return end
  local bk = bkey(b)
  redis.call('HINCRBY', bk, B.flagged, delta)
  for name, i in pairs(FB) do
    if bit.band(flags, 2 ^ (i - 1)) ~= 0 then redis.call('HINCRBY', bk, B['flag_' .. name], delta) end
  end
end

-- A done record the checks flagged keeps its article (as a failed one does), so `retry --flagged` can ask again.
local function flagged(f) return (tonumber(f[F.flags]) or 0) > 0 end

-- Jobs made queued again go out in messages of up to `per` jobs, each registered in the orphans set
-- of its priority step (scored by now) until a worker claims it. Appends MESSAGE records (step, member).
local function enqueue_messages(b, ids, per, now, out)
  if #ids == 0 then return end
  local step = redis.call('HGET', bkey(b), B.step) or '0'
  for i = 1, #ids, per do
    local m = b
    for k = i, math.min(i + per - 1, #ids) do m = m .. L.msep .. ids[k] end
    redis.call('ZADD', orphans_key(step), now, m)
    out[#out + 1] = record(MG, {step = tonumber(step), member = m})
  end
end

-- ---- the result cache and single flight ---------------------------------------------------------------

local WEEK_MS = 7 * 24 * 3600 * 1000

-- The cache key of an article under a batch's answer fingerprint (what shapes the answer).
local function cache_key(fp, digest) return string.sub(redis.sha1hex(fp .. digest), 1, 24) end

-- `batch\x1fjob` of a done job whose answer `key` is, searching the weekly hashes within the TTL.
local function cache_lookup(key, ttl_s, now)
  local week = math.floor(now / WEEK_MS)
  for w = week, week - math.ceil(ttl_s * 1000 / WEEK_MS), -1 do
    local ptr = redis.call('HGET', cache_week(w), key)
    if ptr then return ptr end
  end
  return nil
end

local function cache_store(key, ptr, ttl_s, now)
  local bucket = cache_week(math.floor(now / WEEK_MS))
  redis.call('HSET', bucket, key, ptr)
  redis.call('EXPIRE', bucket, ttl_s + 7 * 24 * 3600)
end

-- The final record a cache entry leads to (unpacked), or nil when it does not prove to be the answer
-- to `key`: the record must be done and carry the same cache key (same article digest, same answer
-- fingerprint). After a purge, an expiry or a batch id reused for other articles the pointer leads
-- elsewhere, and that is a miss, never another article's summary.
local function cached_record(ptr, key)
  local pb, pid = unmember(ptr)
  local rec = redis.call('HGET', part(pb, 'out'), pid)
  if not rec then return nil end
  local f = cmsgpack.unpack(rec)
  if f[F.status] ~= 'done' or f[F.cache_key] ~= key then return nil end
  return f
end

-- Drop the cache pointer to `batch/job` under `key` (a purge removes the pointers it orphans).
local function cache_forget(key, ptr, ttl_s, now)
  local week = math.floor(now / WEEK_MS)
  for w = week, week - math.ceil(ttl_s * 1000 / WEEK_MS), -1 do
    if redis.call('HGET', cache_week(w), key) == ptr then redis.call('HDEL', cache_week(w), key) end
  end
end

-- A job answered without a call: its own final record carries the summary, no tokens, no cost.
local function finalize_cached(b, id, from, f, now)
  local digest, origin = article_of(b, id)
  local rec = pack_final({status = 'done', digest = digest, origin = origin, summary = f[F.summary],
    model = f[F.model], cached = true, chunks = f[F.chunks] or 0, finished_ms = now, cost_usd = 0,
    cache_key = f[F.cache_key] or '', flags = f[F.flags] or 0, copied = f[F.copied] or -1})
  finalize(b, id, from, 'done', rec, flagged(f), now)
  count_flags(b, f[F.flags], 1)
  redis.call('HINCRBY', bkey(b), B.cached, 1)
end

-- The leader of a flight settled: waiting twins are answered from its record (done), failed with its
-- error (`failed`: the same article would fail the same way, and paying for that N times is what single
-- flight is for), or else queued again so one of them makes the call. Appends the messages to publish
-- to `messages`.
local function land(b, id, f, now, per, messages, failed)
  local key = redis.call('HGET', jkey(b, id), H.flight)
  if not key then return end
  if redis.call('GET', flight_key(key)) == member(b, id) then redis.call('DEL', flight_key(key)) end
  local again, order = {}, {}
  for _, w in ipairs(redis.call('SMEMBERS', waiters_key(key))) do
    local wb, wid = unmember(w)
    if redis.call('HGET', jkey(wb, wid), H.status) == 'waiting' then
      redis.call('HDEL', jkey(wb, wid), H.flight)
      redis.call('ZREM', L.due, w)
      if f then
        finalize_cached(wb, wid, 'waiting', f, now)
      elseif failed then
        local err = 'an identical article (' .. id .. ' of batch ' .. b .. ') failed: ' .. failed[F.error]
        finalize(wb, wid, 'waiting', 'failed',
          lua_final(wb, wid, 'failed', string.sub(err, 1, 2000), failed[F.error_type], now),
          true, now)
      else
        redis.call('HSET', jkey(wb, wid), H.status, 'queued')
        if not again[wb] then again[wb] = {}; order[#order + 1] = wb end
        table.insert(again[wb], wid)
      end
    end
  end
  redis.call('DEL', waiters_key(key))
  redis.call('HDEL', jkey(b, id), H.flight)
  for _, wb in ipairs(order) do enqueue_messages(wb, again[wb], per, now, messages) end
end

-- ---- batch mode -----------------------------------------------------------------------------------

-- A job waits for a pack (a provider batch) of its batch: in the batch's packing set, and the batch in
-- the set of batches to pack (scored by when it first had something to pack).
local function to_packing(b, id, from, now)
  move(b, from, 'packing')
  redis.call('HSET', jkey(b, id), H.status, 'packing')
  redis.call('HDEL', jkey(b, id), H.token, H.lease)
  redis.call('ZADD', part(b, 'packing'), 'NX', now, id)
  redis.call('ZADD', L.packing, 'NX', now, b)
end
