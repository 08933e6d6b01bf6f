-- webhook_failed: ARGV[3] job, [4] its webhook cursor as the delivery read it, [5] why the
-- attempt at the event after it failed, [6] when to try again. Counts the failure and makes the
-- job due at the retry (Model::webhook_failed).
-- Returns 1, or 0 when the cursor has moved since it was read (nothing changes).
local function main()
  local job, retry_at = ARGV[3], ARGV[6]
  local jk = KEY.job(job)
  if not hook_at(job, ARGV[4]) then return 0 end
  redis.call('HINCRBY', jk, JOB.wh_tries, 1)
  if tonumber(redis.call('HGET', jk, JOB.wh_since) or '0') == 0 then
    redis.call('HSET', jk, JOB.wh_since, int(NOW))
  end
  redis.call('HINCRBY', jk, JOB.wh_failures, 1)
  redis.call('HSET', jk, JOB.wh_error, ARGV[5], JOB.wh_next, retry_at, JOB.wh_pending, '1')
  redis.call('ZADD', KEY.webhooks, retry_at, job)
  return 1
end
