-- lease: ARGV[3] worker, [4] lease ms, [5] kinds (comma-separated), [6] models (normalised,
-- comma-separated), [7] device, [8] max pixels, [9] max side, [10] max iterations (each 0:
-- any). Returns the leased task (read_task) or nil. Order: priorities high to low; jobs of one priority by fair-share position (new jobs
-- first in submission order, then least recently served); a job's queues by kind rank.
local function main()
  local worker, lease_ms = ARGV[3], tonumber(ARGV[4])
  local kinds, models = {}, {}
  for k in string.gmatch(ARGV[5], '[^,]+') do kinds[k] = true end
  for m in string.gmatch(ARGV[6], '[^,]+') do models[m] = true end
  local device = ARGV[7]
  local limits = { tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]) }

  -- Whether `needed` fits under `limit` (0: no limit).
  local function within(needed, limit)
    return limit == 0 or tonumber(needed) <= limit
  end

  -- Mirrors Requirements::satisfied_by on a queue name kind|pixels|device|models|side|iterations
  -- (or kind|pixels|device|models, stored before sides and iterations: neither limits it).
  local function fits(class)
    local parts = {}
    for part in string.gmatch(class .. '|', '([^|]*)|') do parts[#parts + 1] = part end
    local kind, pixels, dev, needed = parts[1], parts[2], parts[3], parts[4]
    local side, iterations = parts[5] or '0', parts[6] or '0'
    if not kinds[kind] then return false end
    if not (within(pixels, limits[1]) and within(side, limits[2])
        and within(iterations, limits[3])) then
      return false
    end
    if dev ~= '' and device ~= dev and string.sub(device, 1, #dev + 1) ~= dev .. ':' then
      return false
    end
    for m in string.gmatch(needed, '[^,]+') do
      if not models[m] then return false end
    end
    return true
  end

  local function next_queue()
    for _, prio in ipairs(redis.call('ZREVRANGE', KEY.priorities, 0, -1)) do
      for _, job in ipairs(redis.call('ZRANGE', KEY.rotation(prio), 0, -1)) do
        if redis.call('SISMEMBER', KEY.banned(job), worker) == 0 then
          for _, class in ipairs(redis.call('ZRANGE', KEY.classes(job), 0, -1)) do
            if fits(class) then return prio, job, class end
          end
        end
      end
    end
  end

  -- A worker asking for work is alive, whether or not there is any.
  if redis.call('EXISTS', KEY.worker(worker)) == 1 then
    redis.call('HSET', KEY.worker(worker), WORKER.last_seen, int(NOW))
  end
  local prio, job, class = next_queue()
  if not prio then return false end
  local queue = KEY.queue(job, class)
  local tid = redis.call('ZPOPMIN', queue)[1]
  if redis.call('ZCARD', queue) == 0 then
    redis.call('ZREM', KEY.classes(job), class)
    if redis.call('ZCARD', KEY.classes(job)) == 0 then
      redis.call('ZREM', KEY.rotation(prio), job)
      if redis.call('ZCARD', KEY.rotation(prio)) == 0 then
        redis.call('ZREM', KEY.priorities, prio)
      end
    end
  end
  local tick = redis.call('INCR', KEY.tick)
  redis.call('HSET', KEY.job(job), JOB.vt, tick)
  redis.call('HINCRBY', KEY.job(job), JOB.attempts, 1)
  redis.call('ZADD', KEY.rotation(prio), 'XX', tick, job)

  local t = KEY.task(tid)
  move_task(tid, job, 'queued', 'running')
  local attempt = redis.call('HINCRBY', t, TASK.attempt, 1)
  local deadline = int(NOW + lease_ms)
  redis.call('HSET', t, TASK.worker, worker, TASK.deadline, deadline, TASK.started, int(NOW))
  redis.call('ZADD', KEY.leases, deadline, tid)
  local wk = KEY.worker(worker)
  if redis.call('EXISTS', wk) == 1 then
    local slot = WORKER.current
    if worker_holds(worker, redis.call('HGET', wk, WORKER.current)) then slot = WORKER.ahead end
    redis.call('HSET', wk, slot, tid, WORKER.last_seen, int(NOW))
  end
  local kind, unit = unpack(redis.call('HMGET', t, TASK.kind, TASK.unit))
  event(job, 'task_started', { EVENT.task, tid, EVENT.task_kind, kind, EVENT.attempt, attempt,
    EVENT.worker, worker, EVENT.unit, unit })
  return read_task(tid)
end
