-- stats: no arguments. Returns {tasks per state (flat hash `counts`), queued tasks as a flat
-- list of priority, kind, count} for the metrics; a queue's kind is the first part of its class.
local function main()
  local queued = {}
  for _, prio in ipairs(redis.call('ZRANGE', P .. 'prios', 0, -1)) do
    local by_kind = {}
    for _, job in ipairs(redis.call('ZRANGE', P .. 'rr:' .. prio, 0, -1)) do
      for _, class in ipairs(redis.call('ZRANGE', P .. 'classes:' .. job, 0, -1)) do
        local kind = string.match(class, '^([^|]*)')
        by_kind[kind] = (by_kind[kind] or 0) + redis.call('ZCARD', P .. 'q:' .. job .. ':' .. class)
      end
    end
    for kind, n in pairs(by_kind) do
      queued[#queued + 1] = prio
      queued[#queued + 1] = kind
      queued[#queued + 1] = int(n)
    end
  end
  return { redis.call('HGETALL', P .. 'counts'), queued }
end
