-- fail: ARGV[4] task, [5] attempt, [6] worker, [7] error, [8] retryable (0/1), [9] retry budget.
-- The worker is remembered as having failed the task; complete.lua blames it if another worker
-- then does the task.
-- Returns {verdict, failures, banned (0/1)}; verdict 'retrying', 'failed', 'stale', 'cancelled'.
local function main()
  local tid, attempt, worker, err, retryable = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local max_retries = tonumber(ARGV[9])
  local t = task_key(tid)
  local state, current, holder, job, failures =
    unpack(redis.call('HMGET', t, 'state', 'attempt', 'worker', 'job', 'failures'))
  if not state then return { 'stale', 0, 0 } end
  if state == 'cancelled' then return { 'cancelled', tonumber(failures), 0 } end
  if state ~= 'running' or current ~= attempt or holder ~= worker then
    return { 'stale', tonumber(failures), 0 }
  end
  redis.call('RPUSH', P .. 'errors:' .. tid, 'attempt ' .. attempt .. ' on ' .. worker .. ': ' .. err)
  failures = redis.call('HINCRBY', t, 'failures', 1)
  redis.call('ZREM', P .. 'leases', tid)
  release_worker(worker, tid)
  redis.call('SADD', P .. 'tfail:' .. tid, worker)
  local banned = redis.call('SISMEMBER', P .. 'banned:' .. job, worker)
  local verdict
  if retryable == '1' and failures <= max_retries then
    enqueue(tid)
    event(job, 'task_failed', { 'task', tid, 'attempt', attempt, 'worker', worker,
      'error', err, 'retry', '1' })
    verdict = 'retrying'
  else
    fail_for_good(tid, err, worker, attempt)
    verdict = 'failed'
  end
  maybe_finish(job)
  return { verdict, failures, banned }
end
