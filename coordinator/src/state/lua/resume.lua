-- resume: ARGV[3] job. Unmarks a paused job and puts it back in its rotation where it was in
-- line (Model::resume). Returns {'applied'}, {'ended', state} or {'missing'}.
local function main()
  local job = ARGV[3]
  local refused = not_running(job)
  if refused then return refused end
  redis.call('HSET', KEY.job(job), JOB.paused, '0')
  join_rotation(job)
  return { 'applied' }
end
