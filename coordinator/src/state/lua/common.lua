-- Shared prologue of every Tessera script. Each transition mirrors the method of the same name
-- in ../model.rs (the embedded backend); keep the two in step: one conformance suite runs
-- against both.
--
-- ARGV[1] key prefix, ARGV[2] now (ms since the Unix epoch), ARGV[3] events kept per job;
-- script arguments start at ARGV[4]. Numbers that reach Redis go through int() because Lua
-- would print large ones in exponent form.

local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local EVENTS_MAX = ARGV[3]
local RANK = { stitch = 0, upscale_tile = 1, generate = 2 }
local woke = false

local function int(n) return string.format('%d', n) end
local function job_key(job) return P .. 'job:' .. job end
local function task_key(tid) return P .. 'task:' .. tid end
local function worker_key(id) return P .. 'worker:' .. id end

local function event(job, kind, fields)
  local args = { 'XADD', P .. 'events:' .. job, 'MAXLEN', EVENTS_MAX, '*', 'e', kind, 't', int(NOW) }
  for i = 1, #fields do args[#args + 1] = fields[i] end
  redis.call(unpack(args))
end

-- Tasks per state over every job (hash `counts`), kept beside each job's own counts so the
-- metrics read them in one command (stats.lua).
local function move_task(tid, job, from, to)
  redis.call('HSET', task_key(tid), 'state', to)
  redis.call('HINCRBY', job_key(job), 'n_' .. from, -1)
  redis.call('HINCRBY', job_key(job), 'n_' .. to, 1)
  redis.call('HINCRBY', P .. 'counts', from, -1)
  redis.call('HINCRBY', P .. 'counts', to, 1)
end

local function enqueue(tid)
  local job, class, seq, kind, state =
    unpack(redis.call('HMGET', task_key(tid), 'job', 'class', 'seq', 'kind', 'state'))
  move_task(tid, job, state, 'queued')
  local prio, vt = unpack(redis.call('HMGET', job_key(job), 'priority', 'vt'))
  redis.call('ZADD', P .. 'q:' .. job .. ':' .. class, seq, tid)
  redis.call('ZADD', P .. 'classes:' .. job, RANK[kind], class)
  redis.call('ZADD', P .. 'rr:' .. prio, 'NX', vt, job)
  redis.call('ZADD', P .. 'prios', prio, prio)
  woke = true
end

-- A follow-up planned again by a task that ran again (its output was corrupt): an upscale tile
-- that has not finished takes the new spec (the new source picture), and one that waited for
-- it is queued. Stitches and finished tiles stay as they are.
local function refresh_followup(id, spec)
  local kind, state = unpack(redis.call('HMGET', task_key(id), 'kind', 'state'))
  if kind ~= 'upscale_tile' or not (state == 'queued' or state == 'blocked' or state == 'running') then
    return
  end
  redis.call('HSET', task_key(id), 'spec', spec)
  if state == 'blocked' then
    redis.call('HSET', task_key(id), 'waiting', 0)
    enqueue(id)
  end
end

local function create_task(id, job, kind, unit, class, spec, parent, slot, waiting, final, ptiles,
                           pstitches, trace)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('HSET', task_key(id), 'id', id, 'job', job, 'kind', kind, 'unit', unit, 'state', 'blocked',
    'attempt', 0, 'failures', 0, 'expiries', 0, 'worker', '', 'deadline', 0, 'spec', spec,
    'parent', parent, 'slot', slot, 'waiting', waiting, 'final', final, 'checkpoint', '',
    'ckpt_iter', 0, 'iteration', 0, 'loss', '', 'output', '', 'class', class, 'seq', seq,
    'ptiles', ptiles, 'pstitches', pstitches, 'started', 0, 'trace', trace)
  redis.call('RPUSH', P .. 'tasks:' .. job, id)
  redis.call('HINCRBY', job_key(job), 'n_blocked', 1)
  redis.call('HINCRBY', P .. 'counts', 'blocked', 1)
  if tonumber(waiting) == 0 then enqueue(id) end
end

-- Thirteen arguments per task, from ARGV[at]: id, job, kind, unit, class, spec, parent, slot,
-- waiting, final, planned tiles, planned stitches, trace. Returns the index after the last one.
local function create_tasks(at, count)
  for _ = 1, count do
    local id, spec = ARGV[at], ARGV[at + 5]
    if redis.call('EXISTS', task_key(id)) == 1 then
      refresh_followup(id, spec)
    else
      create_task(unpack(ARGV, at, at + 12))
    end
    at = at + 13
  end
  return at
end

local function release_worker(worker, tid)
  if worker ~= '' and redis.call('HGET', worker_key(worker), 'current') == tid then
    redis.call('HSET', worker_key(worker), 'current', '')
  end
end

-- Every end of a job passes here: it no longer counts against its tenant's jobs in flight.
local function job_done_event(job)
  redis.call('SREM', P .. 'running:' .. (redis.call('HGET', job_key(job), 'tenant') or ''), job)
  local v = redis.call('HMGET', job_key(job), 'state', 'n_queued', 'n_blocked', 'n_running',
    'n_done', 'n_failed', 'n_cancelled', 'units_done', 'units_failed')
  event(job, 'job_done', { 'state', v[1], 'queued', v[2], 'blocked', v[3], 'running', v[4],
    'done', v[5], 'failed', v[6], 'cancelled', v[7], 'units_done', v[8], 'units_failed', v[9] })
end

local function maybe_finish(job)
  local jk = job_key(job)
  local state, q, b, r, f =
    unpack(redis.call('HMGET', jk, 'state', 'n_queued', 'n_blocked', 'n_running', 'n_failed'))
  if state ~= 'running' or tonumber(q) + tonumber(b) + tonumber(r) > 0 then return end
  redis.call('HSET', jk, 'state', tonumber(f) > 0 and 'failed' or 'succeeded',
    'finished_ms', int(NOW))
  job_done_event(job)
end

local fail_for_good
fail_for_good = function(tid, reason, worker, attempt)
  local job, kind, unit, parent, state, ptiles, pstitches = unpack(redis.call('HMGET',
    task_key(tid), 'job', 'kind', 'unit', 'parent', 'state', 'ptiles', 'pstitches'))
  move_task(tid, job, state, 'failed')
  local jk = job_key(job)
  redis.call('HINCRBY', jk, 'x_' .. kind, 1)
  if tonumber(ptiles) > 0 then redis.call('HINCRBY', jk, 'e_upscale_tile', -tonumber(ptiles)) end
  if tonumber(pstitches) > 0 then redis.call('HINCRBY', jk, 'e_stitch', -tonumber(pstitches)) end
  if redis.call('HSETNX', P .. 'uerr:' .. job, unit, reason) == 1 then
    redis.call('HINCRBY', jk, 'units_failed', 1)
  end
  event(job, 'task_failed', { 'task', tid, 'attempt', attempt, 'worker', worker,
    'error', reason, 'retry', '0' })
  if parent ~= '' then
    local pstate, pattempt = unpack(redis.call('HMGET', task_key(parent), 'state', 'attempt'))
    if pstate == 'blocked' then
      fail_for_good(parent, 'input ' .. tid .. ' failed: ' .. reason, '', pattempt)
    end
  end
end

-- Adds to a task's error history, naming its latest attempt and worker.
local function note_error(tid, reason)
  local attempt, worker = unpack(redis.call('HMGET', task_key(tid), 'attempt', 'worker'))
  redis.call('RPUSH', P .. 'errors:' .. tid, 'attempt ' .. attempt .. ' on ' .. worker .. ': ' .. reason)
end

local function requeued_event(tid, reason)
  local job, attempt, worker = unpack(redis.call('HMGET', task_key(tid), 'job', 'attempt', 'worker'))
  event(job, 'task_requeued', { 'task', tid, 'attempt', attempt, 'worker', worker, 'reason', reason })
end

local function abandon(tid, reason, max_expiries)
  local t = task_key(tid)
  local job, worker, attempt = unpack(redis.call('HMGET', t, 'job', 'worker', 'attempt'))
  note_error(tid, reason)
  local expiries = redis.call('HINCRBY', t, 'expiries', 1)
  release_worker(worker, tid)
  if expiries > max_expiries then
    fail_for_good(tid, reason .. ' ' .. expiries .. ' times', worker, attempt)
  else
    enqueue(tid)
    requeued_event(tid, reason)
  end
  maybe_finish(job)
end

-- Everything a reader needs of a task: its hash, its errors and its inputs.
local function read_task(tid)
  local fields = redis.call('HGETALL', task_key(tid))
  if #fields == 0 then return false end
  return { fields, redis.call('LRANGE', P .. 'errors:' .. tid, 0, -1),
    redis.call('HGETALL', P .. 'inputs:' .. tid) }
end
