-- fail: ARGV[3] task, [4] attempt, [5] worker, [6] error, [7] retryable (0/1), [8] retry budget.
-- The worker is remembered as having failed the task; complete.lua blames it if another worker
-- then does the task.
-- Returns {verdict, failures, banned (0/1)}; verdict 'retrying', 'failed', 'stale', 'cancelled'.
local function main()
  local tid, attempt, worker, err, retryable = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local max_retries = tonumber(ARGV[8])
  local t = KEY.task(tid)
  local state, current, holder, job, failures = unpack(redis.call('HMGET', t, TASK.state,
    TASK.attempt, TASK.worker, TASK.job, TASK.failures))
  if not state then return { 'stale', 0, 0 } end
  if state == 'cancelled' then return { 'cancelled', tonumber(failures), 0 } end
  if not holds(state, current, holder, attempt, worker) then
    return { 'stale', tonumber(failures), 0 }
  end
  redis.call('RPUSH', KEY.errors(tid), 'attempt ' .. attempt .. ' on ' .. worker .. ': ' .. err)
  failures = redis.call('HINCRBY', t, TASK.failures, 1)
  redis.call('ZREM', KEY.leases, tid)
  release_worker(worker, tid)
  redis.call('SADD', KEY.failed_by(tid), worker)
  local banned = redis.call('SISMEMBER', KEY.banned(job), worker)
  local verdict
  if retryable == '1' and failures <= max_retries then
    enqueue(tid)
    redis.call('HINCRBY', KEY.job(job), JOB.retries, 1)
    event(job, 'task_failed', { EVENT.task, tid, EVENT.attempt, attempt, EVENT.worker, worker,
      EVENT.error, err, EVENT.retry, '1' })
    verdict = 'retrying'
  else
    fail_for_good(tid, err, worker, attempt)
    verdict = 'failed'
  end
  maybe_finish(job)
  return { verdict, failures, banned }
end
