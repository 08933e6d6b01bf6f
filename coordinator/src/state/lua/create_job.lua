-- create_job: ARGV[4] id, [5] name, [6] priority, [7] upscale_only (0/1), [8] settings JSON,
-- [9..11] expected generate / upscale_tile / stitch tasks, [12] unit count,
-- [13] tenant, [14] its jobs-in-flight limit, [15] its submissions-per-minute limit (0: none),
-- then (index, JSON) per unit, then the task count and thirteen arguments per task (see
-- create_tasks).
-- Returns 1, 0 when the id is taken, -1 when the tenant has its limit of jobs running, -2 when
-- it has submitted its limit this minute.
local function main()
  local id = ARGV[4]
  local jk = job_key(id)
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local tenant, in_flight, per_minute = ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15])
  local running_key = P .. 'running:' .. tenant
  if in_flight > 0 and redis.call('SCARD', running_key) >= in_flight then return -1 end
  local minute_key = P .. 'submissions:' .. tenant .. ':' .. int(math.floor(NOW / 60000))
  if per_minute > 0 then
    if tonumber(redis.call('GET', minute_key) or '0') >= per_minute then return -2 end
    redis.call('INCR', minute_key)
    redis.call('PEXPIRE', minute_key, 120000)
  end
  redis.call('SADD', running_key, id)
  local seq = redis.call('INCR', P .. 'jobseq')
  local units = tonumber(ARGV[12])
  redis.call('HSET', jk, 'name', ARGV[5], 'tenant', tenant, 'priority', ARGV[6], 'state', 'running',
    'upscale_only', ARGV[7], 'settings', ARGV[8], 'submitted_ms', int(NOW), 'finished_ms', 0,
    'vt', int(-1000000000 + seq),
    'n_queued', 0, 'n_blocked', 0, 'n_running', 0, 'n_done', 0, 'n_failed', 0, 'n_cancelled', 0,
    'e_generate', ARGV[9], 'e_upscale_tile', ARGV[10], 'e_stitch', ARGV[11],
    'x_generate', 0, 'x_upscale_tile', 0, 'x_stitch', 0,
    'b_generate', 0, 'b_upscale_tile', 0, 'b_stitch', 0,
    'm_generate', 0, 'm_upscale_tile', 0, 'm_stitch', 0,
    'units_total', units, 'units_done', 0, 'units_failed', 0)
  redis.call('ZADD', P .. 'jobs', seq, id)
  redis.call('ZADD', P .. 'tenant_jobs:' .. tenant, seq, id)
  local at = 16
  for _ = 1, units do
    redis.call('HSET', P .. 'units:' .. id, ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  create_tasks(at + 1, tonumber(ARGV[at]))
  return 1
end
