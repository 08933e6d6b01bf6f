-- webhook_advance: ARGV[3] job, [4] its webhook cursor as the delivery read it, [5] the event
-- to move it to, [6] what became of the events up to it: 'skipped', 'delivered' or 'dropped'
-- (its last attempt counts as a failure), [7] why a dropped event failed. The job leaves the
-- outbox when no event follows, and is due again now otherwise (Model::webhook_advance).
-- Returns 1, or 0 when the cursor has moved since it was read (nothing changes).
local function main()
  local job, to, step = ARGV[3], ARGV[5], ARGV[6]
  local jk = KEY.job(job)
  if not hook_at(job, ARGV[4]) then return 0 end
  redis.call('HSET', jk, JOB.wh_cursor, to, JOB.wh_tries, 0, JOB.wh_since, 0, JOB.wh_next, 0)
  if step == 'delivered' then
    redis.call('HINCRBY', jk, JOB.wh_delivered, 1)
  elseif step == 'dropped' then
    redis.call('HINCRBY', jk, JOB.wh_failures, 1)
    redis.call('HINCRBY', jk, JOB.wh_dropped, 1)
    redis.call('HSET', jk, JOB.wh_error, ARGV[7])
  end
  local last = redis.call('XREVRANGE', KEY.events(job), '+', '-', 'COUNT', 1)[1]
  if last and last[1] ~= to then
    redis.call('HSET', jk, JOB.wh_pending, '1')
    redis.call('ZADD', KEY.webhooks, int(NOW), job)
  else
    redis.call('HSET', jk, JOB.wh_pending, '0')
    redis.call('ZREM', KEY.webhooks, job)
  end
  return 1
end
