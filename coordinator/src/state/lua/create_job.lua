-- create_job: ARGV[4] id, [5] name, [6] priority, [7] upscale_only (0/1), [8] settings JSON,
-- [9..11] expected generate / upscale_tile / stitch tasks, [12] unit count, then (index, JSON)
-- per unit, then the task count and thirteen arguments per task (see create_tasks).
-- Returns 1, or 0 when the id is taken.
local function main()
  local id = ARGV[4]
  local jk = job_key(id)
  if redis.call('EXISTS', jk) == 1 then return 0 end
  local seq = redis.call('INCR', P .. 'jobseq')
  local units = tonumber(ARGV[12])
  redis.call('HSET', jk, 'name', ARGV[5], 'priority', ARGV[6], 'state', 'running',
    'upscale_only', ARGV[7], 'settings', ARGV[8], 'submitted_ms', int(NOW), 'finished_ms', 0,
    'vt', int(-1000000000 + seq),
    'n_queued', 0, 'n_blocked', 0, 'n_running', 0, 'n_done', 0, 'n_failed', 0, 'n_cancelled', 0,
    'e_generate', ARGV[9], 'e_upscale_tile', ARGV[10], 'e_stitch', ARGV[11],
    'x_generate', 0, 'x_upscale_tile', 0, 'x_stitch', 0,
    'b_generate', 0, 'b_upscale_tile', 0, 'b_stitch', 0,
    'm_generate', 0, 'm_upscale_tile', 0, 'm_stitch', 0,
    'units_total', units, 'units_done', 0, 'units_failed', 0)
  redis.call('ZADD', P .. 'jobs', seq, id)
  local at = 13
  for _ = 1, units do
    redis.call('HSET', P .. 'units:' .. id, ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  create_tasks(at + 1, tonumber(ARGV[at]))
  return 1
end
