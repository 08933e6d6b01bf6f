-- create_job: ARGV[3] id, [4] name, [5] priority, [6] upscale_only (0/1), [7] settings JSON,
-- [8..10] expected generate / upscale_tile / stitch tasks, [11] unit count,
-- [12] tenant, [13] its jobs-in-flight limit, [14] its submissions-per-minute limit (0: none),
-- then (index, JSON) per unit, then the task count and thirteen arguments per task (see
-- create_tasks), then the job's webhook URL ("" for none).
-- Returns 1, 0 when the id is taken, -1 when the tenant has its limit of jobs running, -2 when
-- it has submitted its limit this minute.
local function main()
  local id = ARGV[3]
  local jk = KEY.job(id)
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local tenant, in_flight, per_minute = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
  local running_key = KEY.running(tenant)
  if in_flight > 0 and redis.call('SCARD', running_key) >= in_flight then return -1 end
  local minute_key = KEY.submissions(tenant, int(math.floor(NOW / 60000)))
  if per_minute > 0 then
    if tonumber(redis.call('GET', minute_key) or '0') >= per_minute then return -2 end
    redis.call('INCR', minute_key)
    redis.call('PEXPIRE', minute_key, 120000)
  end
  redis.call('SADD', running_key, id)
  local seq = redis.call('INCR', KEY.jobseq)
  local units = tonumber(ARGV[11])
  local fields = { JOB.name, ARGV[4], JOB.tenant, tenant, JOB.priority, ARGV[5],
    JOB.state, 'running', JOB.upscale_only, ARGV[6], JOB.settings, ARGV[7],
    JOB.submitted_ms, int(NOW), JOB.finished_ms, 0, JOB.vt, int(-1000000000 + seq),
    JOB.units_total, units, JOB.units_done, 0, JOB.units_failed, 0 }
  for _, state in ipairs({ 'queued', 'blocked', 'running', 'done', 'failed', 'cancelled' }) do
    fields[#fields + 1] = JOB.count .. state
    fields[#fields + 1] = 0
  end
  for i, kind in ipairs({ 'generate', 'upscale_tile', 'stitch' }) do
    for _, counter in ipairs({ JOB.ended, JOB.busy, JOB.timed }) do
      fields[#fields + 1] = counter .. kind
      fields[#fields + 1] = 0
    end
    fields[#fields + 1] = JOB.expected .. kind
    fields[#fields + 1] = ARGV[7 + i]
  end
  redis.call('HSET', jk, unpack(fields))
  redis.call('ZADD', KEY.jobs, seq, id)
  redis.call('ZADD', KEY.tenant_jobs(tenant), seq, id)
  local at = 15
  for _ = 1, units do
    redis.call('HSET', KEY.units(id), ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  local after = create_tasks(at + 1, tonumber(ARGV[at]))
  if ARGV[after] ~= '' then redis.call('HSET', jk, JOB.webhook, ARGV[after]) end
  return 1
end
