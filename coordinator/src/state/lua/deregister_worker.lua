-- deregister_worker: ARGV[3] worker. Removes the worker and queues again the task it holds,
-- counting neither an expiry nor an error: the worker gave it back (Model::take_back).
-- Returns that task's id, if any.
local function main()
  local id = ARGV[3]
  local wk = KEY.worker(id)
  if redis.call('EXISTS', wk) == 0 then return {} end
  local tid = redis.call('HGET', wk, WORKER.current)
  redis.call('DEL', wk)
  redis.call('SREM', KEY.workers, id)
  if tid and tid ~= '' then
    local state, holder = unpack(redis.call('HMGET', KEY.task(tid), TASK.state, TASK.worker))
    if state == 'running' and holder == id then
      redis.call('ZREM', KEY.leases, tid)
      enqueue(tid)
      requeued_event(tid, 'worker deregistered')
      return { tid }
    end
  end
  return {}
end
