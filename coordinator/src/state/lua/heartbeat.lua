-- heartbeat: ARGV[3] task, [4] attempt, [5] worker, [6] lease ms, [7] iteration,
-- [8] iterations, [9] loss ('' for none), [10] checkpoint JSON ('' for none),
-- [11] checkpoint iteration, [12] preview stored (0/1).
-- Returns {'ok', deadline}, {'paused', deadline} (renewed, but the job is paused: a render
-- gives the task back), {'cancelled'} or {'lost'}.
local function main()
  local tid, attempt, worker, lease_ms = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
  local iteration, iterations, loss = ARGV[7], ARGV[8], ARGV[9]
  local checkpoint, checkpoint_iteration, preview = ARGV[10], ARGV[11], ARGV[12]
  local t = KEY.task(tid)
  local state, current, holder, job, kept = unpack(redis.call('HMGET', t, TASK.state,
    TASK.attempt, TASK.worker, TASK.job, TASK.checkpoint_iteration))
  if not state then return { 'lost' } end
  if state == 'cancelled' then return { 'cancelled' } end
  if not holds(state, current, holder, attempt, worker) then return { 'lost' } end
  local deadline = int(NOW + lease_ms)
  redis.call('HSET', t, TASK.deadline, deadline, TASK.iteration, iteration, TASK.loss, loss)
  if checkpoint ~= '' and tonumber(checkpoint_iteration) >= tonumber(kept) then
    redis.call('HSET', t, TASK.checkpoint, checkpoint, TASK.checkpoint_iteration,
      checkpoint_iteration)
    kept = checkpoint_iteration
  end
  redis.call('ZADD', KEY.leases, deadline, tid)
  if redis.call('EXISTS', KEY.worker(worker)) == 1 then
    redis.call('HSET', KEY.worker(worker), WORKER.last_seen, int(NOW))
  end
  event(job, 'progress', { EVENT.task, tid, EVENT.attempt, attempt, EVENT.iteration, iteration,
    EVENT.iterations, iterations, EVENT.loss, loss, EVENT.checkpoint_iteration, kept })
  if preview == '1' then
    event(job, 'preview', { EVENT.task, tid, EVENT.attempt, attempt, EVENT.iteration, iteration })
  end
  if redis.call('HGET', KEY.job(job), JOB.paused) == '1' then return { 'paused', deadline } end
  return { 'ok', deadline }
end
