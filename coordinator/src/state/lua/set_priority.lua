-- set_priority: ARGV[3] job, [4] priority. Moves a running job and its queued tasks to another
-- priority, keeping its fair-share position (Model::set_priority).
-- Returns {'applied'}, {'ended', state} or {'missing'}.
local function main()
  local job = ARGV[3]
  local refused = not_running(job)
  if refused then return refused end
  leave_rotation(job)
  redis.call('HSET', KEY.job(job), JOB.priority, ARGV[4])
  join_rotation(job)
  return { 'applied' }
end
