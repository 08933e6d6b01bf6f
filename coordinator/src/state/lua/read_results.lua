-- read_results: ARGV[4] job, [5] first index, [6] count.
-- Returns {job state, result count, units JSON, outputs JSON or false, errors or false} or nil.
local function main()
  local job, first, count = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  local state, total = unpack(redis.call('HMGET', job_key(job), 'state', 'units_total'))
  if not state then return false end
  local last = math.min(first + count, tonumber(total)) - 1
  if last < first then return { state, total, {}, {}, {} } end
  local indexes = {}
  for i = first, last do indexes[#indexes + 1] = i end
  return { state, total,
    redis.call('HMGET', P .. 'units:' .. job, unpack(indexes)),
    redis.call('HMGET', P .. 'results:' .. job, unpack(indexes)),
    redis.call('HMGET', P .. 'uerr:' .. job, unpack(indexes)) }
end
