-- pause: ARGV[3] job. Takes a running job out of its rotation, so none of its queued tasks is
-- offered, and marks it paused, so its running tasks' heartbeats say so (Model::pause).
-- Returns {'applied'}, {'ended', state} or {'missing'}.
local function main()
  local job = ARGV[3]
  local refused = not_running(job)
  if refused then return refused end
  leave_rotation(job)
  redis.call('HSET', KEY.job(job), JOB.paused, '1')
  return { 'applied' }
end
