
-- Shared epilogue: wake the coordinators' waiting lease requests when tasks were queued.
local result = main()
if woke then redis.call('PUBLISH', KEY.wake, '1') end
return result
