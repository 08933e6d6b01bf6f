-- record_rate: ARGV[3] worker, [4] class of work, [5] amount of it, [6] start of the task's
-- lease, [7] samples after which a class's sums are halved (RATE_WINDOW). Counts a finished
-- task in its class's rate, timed from the later of its lease and its worker's previous
-- finished task; a worker's first finished task of each class only starts its clock
-- (Model::record_rate).
-- Returns 'counted' or 'clock started'.
local function main()
  local worker, class, amount, started = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
  local last = redis.call('HGET', KEY.rate_clock, worker)
  redis.call('HSET', KEY.rate_clock, worker, int(NOW))
  local new = redis.call('SADD', KEY.rate_seen, worker .. '|' .. class) == 1
  if new or not last then return 'clock started' end
  local from = math.max(started, tonumber(last))
  local fields = { RATE.ms .. class, RATE.amount .. class, RATE.samples .. class }
  redis.call('HINCRBY', KEY.rates, fields[1], int(math.max(0, NOW - from)))
  redis.call('HINCRBY', KEY.rates, fields[2], amount)
  local samples = redis.call('HINCRBY', KEY.rates, fields[3], 1)
  if samples >= tonumber(ARGV[7]) then
    for _, field in ipairs(fields) do
      local sum = tonumber(redis.call('HGET', KEY.rates, field))
      redis.call('HSET', KEY.rates, field, int(math.floor(sum / 2)))
    end
  end
  return 'counted'
end
