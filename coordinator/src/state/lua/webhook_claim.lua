-- webhook_claim: ARGV[3] most jobs to claim, [4] claim length in ms. Claims the jobs of the
-- webhook outbox due now, oldest due first (then by id), by pushing their due time to the
-- claim's end, so no other claim returns them meanwhile (Model::webhook_claim).
-- Returns per job {job, tenant, url, cursor, failed tries, failing since}.
local function main()
  local until_ms = int(NOW + tonumber(ARGV[4]))
  local claims = {}
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEY.webhooks, '-inf', int(NOW), 'LIMIT', 0,
    tonumber(ARGV[3]))) do
    redis.call('ZADD', KEY.webhooks, until_ms, job)
    local v = redis.call('HMGET', KEY.job(job), JOB.tenant, JOB.webhook, JOB.wh_cursor,
      JOB.wh_tries, JOB.wh_since)
    claims[#claims + 1] = { job, v[1] or '', v[2] or '', v[3] or '', v[4] or '0', v[5] or '0' }
  end
  return claims
end
