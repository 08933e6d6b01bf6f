-- stats: no arguments. Returns {tasks per state (flat hash KEY.counts), queued tasks as a flat
-- list of priority, kind, count} for the metrics; a queue's kind is the first part of its class.
local function main()
  local queued = {}
  for _, prio in ipairs(redis.call('ZRANGE', KEY.priorities, 0, -1)) do
    local by_kind = {}
    for _, job in ipairs(redis.call('ZRANGE', KEY.rotation(prio), 0, -1)) do
      for _, class in ipairs(redis.call('ZRANGE', KEY.classes(job), 0, -1)) do
        local kind = string.match(class, '^([^|]*)')
        by_kind[kind] = (by_kind[kind] or 0) + redis.call('ZCARD', KEY.queue(job, class))
      end
    end
    for kind, n in pairs(by_kind) do
      queued[#queued + 1] = prio
      queued[#queued + 1] = kind
      queued[#queued + 1] = int(n)
    end
  end
  return { redis.call('HGETALL', KEY.counts), queued }
end
