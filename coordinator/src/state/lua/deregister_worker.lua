-- deregister_worker: ARGV[3] worker, [4] expiries after which a task fails for good.
-- Removes the worker and queues again the task it holds; returns that task's id, if any.
local function main()
  local id, max_expiries = ARGV[3], tonumber(ARGV[4])
  local wk = KEY.worker(id)
  if redis.call('EXISTS', wk) == 0 then return {} end
  local tid = redis.call('HGET', wk, WORKER.current)
  redis.call('DEL', wk)
  redis.call('SREM', KEY.workers, id)
  if tid and tid ~= '' then
    local state, holder = unpack(redis.call('HMGET', KEY.task(tid), TASK.state, TASK.worker))
    if state == 'running' and holder == id then
      redis.call('ZREM', KEY.leases, tid)
      abandon(tid, 'worker deregistered', max_expiries)
      return { tid }
    end
  end
  return {}
end
