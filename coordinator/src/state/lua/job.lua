-- job: ARGV[3] job. Returns {job hash, queued tasks of higher-priority jobs} or nil.
local function main()
  local jk = KEY.job(ARGV[3])
  local fields = redis.call('HGETALL', jk)
  if #fields == 0 then return false end
  local prio = redis.call('HGET', jk, JOB.priority)
  local ahead = 0
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEY.priorities, '(' .. prio, '+inf')) do
    for _, job in ipairs(redis.call('ZRANGE', KEY.rotation(p), 0, -1)) do
      ahead = ahead + tonumber(redis.call('HGET', KEY.job(job), JOB.count .. 'queued'))
    end
  end
  return { fields, ahead }
end
