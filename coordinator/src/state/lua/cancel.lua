-- cancel: ARGV[4] job. Returns {'cancelled'}, {'ended', state} or {'missing'}.
local function main()
  local job = ARGV[4]
  local jk = job_key(job)
  local state, prio = unpack(redis.call('HMGET', jk, 'state', 'priority'))
  if not state then return { 'missing' } end
  if state ~= 'running' then return { 'ended', state } end
  for _, tid in ipairs(redis.call('LRANGE', P .. 'tasks:' .. job, 0, -1)) do
    local s, kind, worker = unpack(redis.call('HMGET', task_key(tid), 'state', 'kind', 'worker'))
    if s == 'queued' or s == 'blocked' or s == 'running' then
      if s == 'running' then
        redis.call('ZREM', P .. 'leases', tid)
        release_worker(worker, tid)
      end
      move_task(tid, job, s, 'cancelled')
      redis.call('HINCRBY', jk, 'x_' .. kind, 1)
    end
  end
  for _, class in ipairs(redis.call('ZRANGE', P .. 'classes:' .. job, 0, -1)) do
    redis.call('DEL', P .. 'q:' .. job .. ':' .. class)
  end
  redis.call('DEL', P .. 'classes:' .. job)
  redis.call('ZREM', P .. 'rr:' .. prio, job)
  if redis.call('ZCARD', P .. 'rr:' .. prio) == 0 then redis.call('ZREM', P .. 'prios', prio) end
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_ms', int(NOW))
  job_done_event(job)
  return { 'cancelled' }
end
