-- complete: ARGV[3] task, [4] attempt, [5] worker, [6] output JSON, [7] failed tasks (done by
-- others) after which a worker is kept off a job (0: never), [8] follow-up count, then thirteen
-- arguments per follow-up task (see create_tasks).
-- Returns 'accepted', 'duplicate', 'stale' or 'cancelled'.
-- Workers whose attempts failed at a task that `completer` then did were at fault, not the task
-- (model.rs `blame`): a poison task, failing everywhere, bans nobody.
local function blame(job, tid, completer, ban_after)
  for _, culprit in ipairs(redis.call('SMEMBERS', KEY.failed_by(tid))) do
    if culprit ~= completer then
      local count = redis.call('HINCRBY', KEY.worker_failures(job), culprit, 1)
      if ban_after > 0 and count >= ban_after then
        redis.call('SADD', KEY.banned(job), culprit)
      end
    end
  end
  redis.call('DEL', KEY.failed_by(tid))
end

local function main()
  local tid, attempt, worker, output = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local t = KEY.task(tid)
  local state, current, holder, job, kind, unit, final, parent, slot, started =
    unpack(redis.call('HMGET', t, TASK.state, TASK.attempt, TASK.worker, TASK.job, TASK.kind,
      TASK.unit, TASK.final, TASK.parent, TASK.slot, TASK.started))
  if not state then return 'stale' end
  if state == 'done' and current == attempt then return 'duplicate' end
  if state == 'cancelled' then return 'cancelled' end
  if not holds(state, current, holder, attempt, worker) then return 'stale' end
  redis.call('ZREM', KEY.leases, tid)
  release_worker(worker, tid)
  if redis.call('EXISTS', KEY.worker(worker)) == 1 then
    redis.call('HINCRBY', KEY.worker(worker), WORKER.done, 1)
  end
  move_task(tid, job, 'running', 'done')
  redis.call('HSET', t, TASK.output, output)
  blame(job, tid, worker, tonumber(ARGV[7]))
  local jk = KEY.job(job)
  redis.call('HINCRBY', jk, JOB.ended .. kind, 1)
  redis.call('HINCRBY', jk, JOB.busy .. kind, int(math.max(0, NOW - tonumber(started))))
  redis.call('HINCRBY', jk, JOB.timed .. kind, 1)
  if final == '1' then
    redis.call('HSET', KEY.results(job), unit, output)
    redis.call('HINCRBY', jk, JOB.units_done, 1)
  end
  event(job, 'task_done', { EVENT.task, tid, EVENT.task_kind, kind, EVENT.attempt, attempt,
    EVENT.worker, worker, EVENT.unit, unit, EVENT.final, final, EVENT.output, output })
  if parent ~= '' then
    local pk = KEY.task(parent)
    if redis.call('EXISTS', pk) == 1 then
      redis.call('HSET', KEY.inputs(parent), slot, output)
      local waiting = tonumber(redis.call('HGET', pk, TASK.waiting))
      if waiting > 0 then
        waiting = waiting - 1
        redis.call('HSET', pk, TASK.waiting, waiting)
      end
      if waiting == 0 and redis.call('HGET', pk, TASK.state) == 'blocked' then enqueue(parent) end
    end
  end
  create_tasks(9, tonumber(ARGV[8]))
  maybe_finish(job)
  return 'accepted'
end
