-- deregister_worker: ARGV[3] worker. Removes the worker and queues again the tasks it holds
-- (its current one and the one leased ahead), counting neither an expiry nor an error: the
-- worker gave them back (Model::take_back). Returns their ids.
local function main()
  local id = ARGV[3]
  local wk = KEY.worker(id)
  if redis.call('EXISTS', wk) == 0 then return {} end
  local held = {}
  for _, tid in ipairs(redis.call('HMGET', wk, WORKER.current, WORKER.ahead)) do
    if worker_holds(id, tid) then held[#held + 1] = tid end
  end
  redis.call('DEL', wk)
  redis.call('SREM', KEY.workers, id)
  for _, tid in ipairs(held) do
    redis.call('ZREM', KEY.leases, tid)
    enqueue(tid)
    requeued_event(tid, 'worker deregistered')
  end
  return held
end
