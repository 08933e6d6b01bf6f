-- redo_input: ARGV[3] task, [4] attempt, [5] worker, [6] key of the corrupt input, [7] the task
-- that made it ('' when none did). Returns 'waiting_for_input', 'requeued', 'failed', 'stale'
-- or 'cancelled'.

-- Whether an artifact's JSON ('' for none) is the file with key `key`.
local function is_key(json, key)
  return json ~= '' and cjson.decode(json).key == key
end

-- Whether `key` is a file the task downloads to run (model.rs `TaskRecord::input`): an input
-- it consumes, an upscale tile's source picture, or its checkpoint.
local function holds_input(tid, spec, checkpoint, key)
  local decoded = cjson.decode(spec)
  if decoded.kind == 'upscale_tile' and decoded.source.key == key then return true end
  if is_key(checkpoint, key) then return true end
  for _, input in ipairs(redis.call('HVALS', KEY.inputs(tid))) do
    if is_key(input, key) then return true end
  end
  return false
end

local function requeue(tid, reason)
  note_error(tid, reason)
  enqueue(tid)
  requeued_event(tid, reason)
end

-- Whether `producer` of `job` made `key`: its accepted output, or it is being made again.
local function made(producer, job, key)
  local pjob, state, output = unpack(redis.call('HMGET', KEY.task(producer), TASK.job,
    TASK.state, TASK.output))
  if pjob ~= job then return false end
  if output ~= '' then return state == 'done' and is_key(output, key) end
  return state == 'queued' or state == 'running'
end

local function redo(producer, key, consumer)
  local p = KEY.task(producer)
  local output, kind, job, parent, slot = unpack(redis.call('HMGET', p, TASK.output, TASK.kind,
    TASK.job, TASK.parent, TASK.slot))
  if output == '' then return end
  redis.call('HSET', p, TASK.output, '')
  local reason = 'its output ' .. key .. ' is corrupt in the artifact store (found by ' ..
    consumer .. '); running again'
  note_error(producer, reason)
  redis.call('HINCRBY', KEY.job(job), JOB.ended .. kind, -1)
  if parent == consumer then redis.call('HDEL', KEY.inputs(consumer), slot) end
  enqueue(producer)
  requeued_event(producer, reason)
end

local function main()
  local tid, attempt, worker, key, producer = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local t = KEY.task(tid)
  local state, current, holder, job, checkpoint, spec = unpack(redis.call('HMGET', t,
    TASK.state, TASK.attempt, TASK.worker, TASK.job, TASK.checkpoint, TASK.spec))
  if not state then return 'stale' end
  if state == 'cancelled' then return 'cancelled' end
  if not holds(state, current, holder, attempt, worker) then return 'stale' end
  local held = holds_input(tid, spec, checkpoint, key)
  redis.call('ZREM', KEY.leases, tid)
  release_worker(worker, tid)
  local verdict
  if is_key(checkpoint, key) then
    redis.call('HSET', t, TASK.checkpoint, '', TASK.checkpoint_iteration, 0)
    requeue(tid, 'checkpoint ' .. key .. ' is corrupt in the artifact store; starting over')
    verdict = 'requeued'
  elseif not held then
    requeue(tid, 'input ' .. key .. ' was made again meanwhile; running with the new one')
    verdict = 'requeued'
  elseif producer ~= '' and made(producer, job, key) then
    redo(producer, key, tid)
    local reason = 'input ' .. key .. ' is corrupt in the artifact store; waiting for ' ..
      producer .. ' to make it again'
    note_error(tid, reason)
    redis.call('HINCRBY', t, TASK.waiting, 1)
    move_task(tid, job, 'running', 'blocked')
    requeued_event(tid, reason)
    verdict = 'waiting_for_input'
  else
    local reason = 'input ' .. key .. ' is corrupt in the artifact store and no task of this ' ..
      'job made it (an uploaded picture): upload it again and submit a new job'
    note_error(tid, reason)
    fail_for_good(tid, reason, worker, attempt)
    verdict = 'failed'
  end
  maybe_finish(job)
  return verdict
end
