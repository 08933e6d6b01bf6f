-- cancel: ARGV[3] job. Returns {'cancelled'}, {'ended', state} or {'missing'}.
local function main()
  local job = ARGV[3]
  local jk = KEY.job(job)
  local state = redis.call('HGET', jk, JOB.state)
  if not state then return { 'missing' } end
  if state ~= 'running' then return { 'ended', state } end
  for _, tid in ipairs(redis.call('LRANGE', KEY.tasks(job), 0, -1)) do
    local s, kind, worker = unpack(redis.call('HMGET', KEY.task(tid), TASK.state, TASK.kind,
      TASK.worker))
    if s == 'queued' or s == 'blocked' or s == 'running' then
      if s == 'running' then
        redis.call('ZREM', KEY.leases, tid)
        release_worker(worker, tid)
      end
      move_task(tid, job, s, 'cancelled')
      redis.call('HINCRBY', jk, JOB.ended .. kind, 1)
    end
  end
  leave_rotation(job)
  for _, class in ipairs(redis.call('ZRANGE', KEY.classes(job), 0, -1)) do
    redis.call('DEL', KEY.queue(job, class))
  end
  redis.call('DEL', KEY.classes(job))
  redis.call('HSET', jk, JOB.state, 'cancelled', JOB.finished_ms, int(NOW))
  job_done_event(job)
  return { 'cancelled' }
end
