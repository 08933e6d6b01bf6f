-- results: ARGV[3] job, [4] first index, [5] count.
-- Returns {job state, result count, units JSON, outputs JSON or false, errors or false} or nil.
local function main()
  local job, first, count = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local state, total = unpack(redis.call('HMGET', KEY.job(job), JOB.state, JOB.units_total))
  if not state then return false end
  local last = math.min(first + count, tonumber(total)) - 1
  if last < first then return { state, total, {}, {}, {} } end
  local indexes = {}
  for i = first, last do indexes[#indexes + 1] = i end
  return { state, total,
    redis.call('HMGET', KEY.units(job), unpack(indexes)),
    redis.call('HMGET', KEY.results(job), unpack(indexes)),
    redis.call('HMGET', KEY.unit_errors(job), unpack(indexes)) }
end
