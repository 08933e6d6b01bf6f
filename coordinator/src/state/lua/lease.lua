-- lease: ARGV[4] worker, [5] lease ms, [6] kinds (comma-separated), [7] models (normalised,
-- comma-separated), [8] device, [9] max pixels (0: any). Returns the leased task (read_task)
-- or nil. Order: priorities high to low; jobs of one priority by fair-share position (new jobs
-- first in submission order, then least recently served); a job's queues by kind rank.
local function main()
  local worker, lease_ms = ARGV[4], tonumber(ARGV[5])
  local kinds, models = {}, {}
  for k in string.gmatch(ARGV[6], '[^,]+') do kinds[k] = true end
  for m in string.gmatch(ARGV[7], '[^,]+') do models[m] = true end
  local device, max_pixels = ARGV[8], tonumber(ARGV[9])

  -- Mirrors Requirements::satisfied_by on a queue name kind|pixels|device|models.
  local function fits(class)
    local kind, pixels, dev, needed = string.match(class, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
    if not kind or not kinds[kind] then return false end
    if max_pixels > 0 and tonumber(pixels) > max_pixels then return false end
    if dev ~= '' and device ~= dev and string.sub(device, 1, #dev + 1) ~= dev .. ':' then
      return false
    end
    for m in string.gmatch(needed, '[^,]+') do
      if not models[m] then return false end
    end
    return true
  end

  local function next_queue()
    for _, prio in ipairs(redis.call('ZREVRANGE', P .. 'prios', 0, -1)) do
      for _, job in ipairs(redis.call('ZRANGE', P .. 'rr:' .. prio, 0, -1)) do
        if redis.call('SISMEMBER', P .. 'banned:' .. job, worker) == 0 then
          for _, class in ipairs(redis.call('ZRANGE', P .. 'classes:' .. job, 0, -1)) do
            if fits(class) then return prio, job, class end
          end
        end
      end
    end
  end

  local prio, job, class = next_queue()
  if not prio then return false end
  local queue = P .. 'q:' .. job .. ':' .. class
  local tid = redis.call('ZPOPMIN', queue)[1]
  if redis.call('ZCARD', queue) == 0 then
    redis.call('ZREM', P .. 'classes:' .. job, class)
    if redis.call('ZCARD', P .. 'classes:' .. job) == 0 then
      redis.call('ZREM', P .. 'rr:' .. prio, job)
      if redis.call('ZCARD', P .. 'rr:' .. prio) == 0 then redis.call('ZREM', P .. 'prios', prio) end
    end
  end
  local tick = redis.call('INCR', P .. 'tick')
  redis.call('HSET', job_key(job), 'vt', tick)
  redis.call('ZADD', P .. 'rr:' .. prio, 'XX', tick, job)

  local t = task_key(tid)
  move_task(tid, job, 'queued', 'running')
  local attempt = redis.call('HINCRBY', t, 'attempt', 1)
  local deadline = int(NOW + lease_ms)
  redis.call('HSET', t, 'worker', worker, 'deadline', deadline, 'started', int(NOW))
  redis.call('ZADD', P .. 'leases', deadline, tid)
  if redis.call('EXISTS', worker_key(worker)) == 1 then
    redis.call('HSET', worker_key(worker), 'current', tid, 'last_seen', int(NOW))
  end
  local kind, unit = unpack(redis.call('HMGET', t, 'kind', 'unit'))
  event(job, 'task_started', { 'task', tid, 'kind', kind, 'attempt', attempt, 'worker', worker,
    'unit', unit })
  return read_task(tid)
end
