-- complete: ARGV[4] task, [5] attempt, [6] worker, [7] output JSON, [8] failed tasks (done by
-- others) after which a worker is kept off a job (0: never), [9] follow-up count, then thirteen
-- arguments per follow-up task (see create_tasks).
-- Returns 'accepted', 'duplicate', 'stale' or 'cancelled'.
-- Workers whose attempts failed at a task that `completer` then did were at fault, not the task
-- (model.rs `blame`): a poison task, failing everywhere, bans nobody.
local function blame(job, tid, completer, ban_after)
  for _, culprit in ipairs(redis.call('SMEMBERS', P .. 'tfail:' .. tid)) do
    if culprit ~= completer then
      local count = redis.call('HINCRBY', P .. 'wfail:' .. job, culprit, 1)
      if ban_after > 0 and count >= ban_after then
        redis.call('SADD', P .. 'banned:' .. job, culprit)
      end
    end
  end
  redis.call('DEL', P .. 'tfail:' .. tid)
end

local function main()
  local tid, attempt, worker, output = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local t = task_key(tid)
  local state, current, holder, job, kind, unit, final, parent, slot, started =
    unpack(redis.call('HMGET', t, 'state', 'attempt', 'worker', 'job', 'kind', 'unit', 'final',
      'parent', 'slot', 'started'))
  if not state then return 'stale' end
  if state == 'done' and current == attempt then return 'duplicate' end
  if state == 'cancelled' then return 'cancelled' end
  if state ~= 'running' or current ~= attempt or holder ~= worker then return 'stale' end
  redis.call('ZREM', P .. 'leases', tid)
  release_worker(worker, tid)
  if redis.call('EXISTS', worker_key(worker)) == 1 then
    redis.call('HINCRBY', worker_key(worker), 'done', 1)
  end
  move_task(tid, job, 'running', 'done')
  redis.call('HSET', t, 'output', output)
  blame(job, tid, worker, tonumber(ARGV[8]))
  local jk = job_key(job)
  redis.call('HINCRBY', jk, 'x_' .. kind, 1)
  redis.call('HINCRBY', jk, 'b_' .. kind, int(math.max(0, NOW - tonumber(started))))
  redis.call('HINCRBY', jk, 'm_' .. kind, 1)
  if final == '1' then
    redis.call('HSET', P .. 'results:' .. job, unit, output)
    redis.call('HINCRBY', jk, 'units_done', 1)
  end
  event(job, 'task_done', { 'task', tid, 'kind', kind, 'attempt', attempt, 'worker', worker,
    'unit', unit, 'final', final, 'output', output })
  if parent ~= '' then
    local pk = task_key(parent)
    if redis.call('EXISTS', pk) == 1 then
      redis.call('HSET', P .. 'inputs:' .. parent, slot, output)
      local waiting = tonumber(redis.call('HGET', pk, 'waiting'))
      if waiting > 0 then
        waiting = waiting - 1
        redis.call('HSET', pk, 'waiting', waiting)
      end
      if waiting == 0 and redis.call('HGET', pk, 'state') == 'blocked' then enqueue(parent) end
    end
  end
  create_tasks(10, tonumber(ARGV[9]))
  maybe_finish(job)
  return 'accepted'
end
