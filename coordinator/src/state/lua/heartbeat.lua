-- heartbeat: ARGV[4] task, [5] attempt, [6] worker, [7] lease ms, [8] iteration,
-- [9] iterations, [10] loss ('' for none), [11] checkpoint JSON ('' for none),
-- [12] checkpoint iteration, [13] preview stored (0/1).
-- Returns {'ok', deadline}, {'cancelled'} or {'lost'}.
local function main()
  local tid, attempt, worker, lease_ms = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
  local iteration, iterations, loss = ARGV[8], ARGV[9], ARGV[10]
  local checkpoint, checkpoint_iteration, preview = ARGV[11], ARGV[12], ARGV[13]
  local t = task_key(tid)
  local state, current, holder, job, kept =
    unpack(redis.call('HMGET', t, 'state', 'attempt', 'worker', 'job', 'ckpt_iter'))
  if not state then return { 'lost' } end
  if state == 'cancelled' then return { 'cancelled' } end
  if state ~= 'running' or current ~= attempt or holder ~= worker then return { 'lost' } end
  local deadline = int(NOW + lease_ms)
  redis.call('HSET', t, 'deadline', deadline, 'iteration', iteration, 'loss', loss)
  if checkpoint ~= '' and tonumber(checkpoint_iteration) >= tonumber(kept) then
    redis.call('HSET', t, 'checkpoint', checkpoint, 'ckpt_iter', checkpoint_iteration)
    kept = checkpoint_iteration
  end
  redis.call('ZADD', P .. 'leases', deadline, tid)
  if redis.call('EXISTS', worker_key(worker)) == 1 then
    redis.call('HSET', worker_key(worker), 'last_seen', int(NOW))
  end
  event(job, 'progress', { 'task', tid, 'attempt', attempt, 'iteration', iteration,
    'iterations', iterations, 'loss', loss, 'ckpt_iter', kept })
  if preview == '1' then
    event(job, 'preview', { 'task', tid, 'attempt', attempt, 'iteration', iteration })
  end
  return { 'ok', deadline }
end
