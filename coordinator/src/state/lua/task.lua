-- task: ARGV[3] task. Returns {task hash, errors, inputs} or nil.
local function main()
  return read_task(ARGV[3])
end
