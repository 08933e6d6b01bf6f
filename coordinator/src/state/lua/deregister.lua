-- deregister: ARGV[4] worker, [5] expiries after which a task fails for good.
-- Removes the worker and queues again the task it holds; returns that task's id, if any.
local function main()
  local id, max_expiries = ARGV[4], tonumber(ARGV[5])
  local wk = worker_key(id)
  if redis.call('EXISTS', wk) == 0 then return {} end
  local tid = redis.call('HGET', wk, 'current')
  redis.call('DEL', wk)
  redis.call('SREM', P .. 'workers', id)
  if tid and tid ~= '' then
    local state, holder = unpack(redis.call('HMGET', task_key(tid), 'state', 'worker'))
    if state == 'running' and holder == id then
      redis.call('ZREM', P .. 'leases', tid)
      abandon(tid, 'worker deregistered', max_expiries)
      return { tid }
    end
  end
  return {}
end
