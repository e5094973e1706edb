-- Give back hits charged by sliding_window.lua.
--
-- Used only on Redis Cluster when one request's counters live in several hash slots:
-- each slot is decided atomically by its own script call, and when one slot denies
-- after another allowed and charged, the charged counters are refunded here so that a
-- denied request consumes nothing (see docs/concepts.md, "What is atomic").
--
-- KEYS: counter keys.
-- ARGV: [1] the `now` (microseconds) returned by the charging call,
--       then per key: window_us, cost
-- The hit was counted in window floor(now / W); if that window has since become the
-- previous one, the refund comes off the previous count.

local now = tonumber(ARGV[1])
local floor = math.floor
for i = 1, #KEYS do
  local w = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  local idx = floor(now / w)
  local st = redis.call('HMGET', KEYS[i], 'w', 'p', 'c')
  local sw = tonumber(st[1])
  if sw == idx then
    local c = math.max(0, (tonumber(st[3]) or 0) - cost)
    redis.call('HSET', KEYS[i], 'c', string.format('%d', c))
  elseif sw == idx + 1 then
    local p = math.max(0, (tonumber(st[2]) or 0) - cost)
    redis.call('HSET', KEYS[i], 'p', string.format('%d', p))
  end
end
return #KEYS
