-- release: ARGV[3] task, [4] attempt, [5] worker. Queues again a task its holder gives back
-- unfinished because its job was paused (after a heartbeat with its checkpoint), counting
-- neither an expiry nor an error (Model::release).
-- Returns 1, or 0 when the attempt no longer holds the task.
local function main()
  local tid, attempt, worker = ARGV[3], ARGV[4], ARGV[5]
  local state, current, holder = unpack(redis.call('HMGET', KEY.task(tid), TASK.state,
    TASK.attempt, TASK.worker))
  if not holds(state, current, holder, attempt, worker) then return 0 end
  redis.call('ZREM', KEY.leases, tid)
  release_worker(worker, tid)
  enqueue(tid)
  requeued_event(tid, 'given back: its job was paused')
  return 1
end
