-- expire: ARGV[3] most tasks to handle, [4] expiries after which a task fails for good.
-- Queues again the tasks whose lease ended at or before now; returns their ids.
local function main()
  local limit, max_expiries = tonumber(ARGV[3]), tonumber(ARGV[4])
  local due = redis.call('ZRANGEBYSCORE', KEY.leases, '-inf', int(NOW), 'LIMIT', 0, limit)
  local requeued = {}
  for _, tid in ipairs(due) do
    redis.call('ZREM', KEY.leases, tid)
    if redis.call('HGET', KEY.task(tid), TASK.state) == 'running' then
      abandon(tid, 'lease expired', max_expiries)
      requeued[#requeued + 1] = tid
    end
  end
  return requeued
end
