-- Sliding window counter, all-or-nothing per request, several requests per call.
--
-- The Python reference in ratelimit/_window.py (`run_batch`) implements exactly the
-- same steps; tests/test_model.py proves both give identical results.
--
-- Each counter is a hash {w = window index, p = previous window count, c = current
-- window count}. For a limit N per window W (microseconds) at time `now`:
--   idx      = floor(now / W)            (windows aligned to the epoch)
--   elapsed  = now - idx * W
--   estimate = p * ((W - elapsed) / W) + c
-- A hit of cost k is allowed iff estimate + k <= N. A request (several counters) is
-- allowed iff every counter allows it; then, and only then, every counter moves.
--
-- KEYS: the counter keys of every request, in order.
-- ARGV: [1] now in microseconds, or '' to read Redis TIME (the only production mode)
--       [2] number of requests R
--       then per request: commit (1|0), number of counters n,
--       then per counter: window_us, limit, cost
-- Returns: {now_us, then per request: allowed (1|0), then per counter: p, c}
-- (p and c after the request: they include its cost when it was allowed and committed).

if redis.replicate_commands then
  -- Redis < 5 needs effects replication for TIME; a no-op on newer servers.
  redis.replicate_commands()
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local fmt = string.format
local floor = math.floor
local out = {now}
local o = 1   -- last index written in out
local nreq = tonumber(ARGV[2])
local a = 3   -- cursor into ARGV
local k = 1   -- cursor into KEYS
-- Per-counter scratch, reused by every request (indexes 1..n are always rewritten).
local idxs, ps, cs, same, ws, costs = {}, {}, {}, {}, {}, {}

for _ = 1, nreq do
  local commit = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local allowed = 1
  for i = 1, n do
    local w = tonumber(ARGV[a])
    local limit = tonumber(ARGV[a + 1])
    local cost = tonumber(ARGV[a + 2])
    local idx = floor(now / w)
    local st = redis.call('HMGET', KEYS[k + i - 1], 'w', 'p', 'c')
    local sw = tonumber(st[1])
    local p, c = 0, 0
    if sw == idx then
      p = tonumber(st[2]) or 0
      c = tonumber(st[3]) or 0
    elseif sw == idx - 1 then
      p = tonumber(st[3]) or 0
    end
    local elapsed = now - idx * w
    if p * ((w - elapsed) / w) + c + cost > limit then
      allowed = 0
    end
    idxs[i], ps[i], cs[i], same[i], ws[i], costs[i] = idx, p, c, sw == idx, w, cost
    a = a + 3
  end
  if allowed == 1 and commit then
    for i = 1, n do
      local cost = costs[i]
      if cost > 0 then
        local key = KEYS[k + i - 1]
        local c = cs[i] + cost
        cs[i] = c
        if same[i] then
          -- Same window: only the current count moves (the cost's own ARGV string).
          redis.call('HINCRBY', key, 'c', ARGV[a - 3 * (n - i) - 1])
        else
          local w = ws[i]
          redis.call('HSET', key, 'w', fmt('%d', idxs[i]), 'p', fmt('%d', ps[i]), 'c', fmt('%d', c))
          -- The counts matter until the end of the next window, then the key may go.
          -- That deadline depends only on the window index, so it is set once per
          -- window, when the index changes.
          local ttl_ms = floor((2 * w - (now - idxs[i] * w)) / 1000) + 1
          redis.call('PEXPIRE', key, fmt('%d', ttl_ms))
        end
      end
    end
  end
  out[o + 1] = allowed
  o = o + 1
  for i = 1, n do
    out[o + 1] = ps[i]
    out[o + 2] = cs[i]
    o = o + 2
  end
  k = k + n
end

return out
