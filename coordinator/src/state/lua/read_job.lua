-- read_job: ARGV[4] job. Returns {job hash, queued tasks of higher-priority jobs} or nil.
local function main()
  local jk = job_key(ARGV[4])
  local fields = redis.call('HGETALL', jk)
  if #fields == 0 then return false end
  local prio = redis.call('HGET', jk, 'priority')
  local ahead = 0
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', P .. 'prios', '(' .. prio, '+inf')) do
    for _, job in ipairs(redis.call('ZRANGE', P .. 'rr:' .. p, 0, -1)) do
      ahead = ahead + tonumber(redis.call('HGET', job_key(job), 'n_queued'))
    end
  end
  return { fields, ahead }
end
