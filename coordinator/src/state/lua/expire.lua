-- expire: ARGV[4] most tasks to handle, [5] expiries after which a task fails for good.
-- Queues again the tasks whose lease ended at or before now; returns their ids.
local function main()
  local limit, max_expiries = tonumber(ARGV[4]), tonumber(ARGV[5])
  local due = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', int(NOW), 'LIMIT', 0, limit)
  local requeued = {}
  for _, tid in ipairs(due) do
    redis.call('ZREM', P .. 'leases', tid)
    if redis.call('HGET', task_key(tid), 'state') == 'running' then
      abandon(tid, 'lease expired', max_expiries)
      requeued[#requeued + 1] = tid
    end
  end
  return requeued
end
