-- Admit one request against every limit of two scopes (key, tenant) at once: all or nothing.
--
-- Requests per window use an exact sliding log: a sorted set of admitted request ids scored by
-- time; entries older than the window fall out, and a request is admitted while fewer than the
-- limit remain. So no window of that length ever holds more than the limit: no edge burst.
-- Tokens per window use GCRA (the generic cell rate algorithm), which takes variable costs and
-- refunds: one key holds the theoretical arrival time (TAT) in ms; a cost of n moves it by
-- n * window / limit, admitted while TAT - now <= window; capacity returns smoothly.
-- Concurrency is a sorted set of leases scored by their expiry, so a dead gateway's slots
-- come back by themselves. Time comes from Redis (TIME), never from a gateway's clock.
--
-- The lease id names the admission: an admitted one leaves a marker holding its tokens for a
-- window, so the same call sent again (a retry after a timeout) charges nothing twice, and
-- release.lua can undo it once. A marker release.lua left ("x") cancels an admission that
-- arrives after the gateway gave up on it.
--
-- KEYS: key rpm, key tpm, key leases, tenant rpm, tenant tpm, tenant leases, marker
-- ARGV: tokens, lease id, lease ttl ms, window ms (60000 in production), then per scope
--       (key, tenant): rpm, tpm, max concurrency (0 = no limit at that scope)
-- Reply: {1, req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms}
--        (integers; "" for a kind no scope limits)
--     or {0, scope (1 key, 2 tenant), kind ("requests"|"tokens"|"concurrency"), retry_ms, limit}
--        (numbers as strings: Redis would truncate fractions)
--     or {2, marker}: this lease was seen before (tokens: admitted then; "x": released)
--
-- Cost: this runs once per request, so it is written for Redis's Lua: every number that
-- becomes a string (tostring, a number passed to redis.call) goes through printf("%.17g"),
-- ~1 µs each on a 2-core VM, as much as a whole GET. So times are whole milliseconds formatted
-- once with %d, and the admitted reply is integers (no conversion at all). Scores and expiries
-- of the request logs and lease sets are in ms, as before.

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local now_ms = string.format('%d', now)  -- once: lease sets are trimmed by it, request logs scored by it
local tokens, lease, PERIOD = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[4])
local marker = KEYS[7]

local seen = redis.call('GET', marker)
if seen then
  return {2, seen}
end

local function refuse(scope, kind, retry, limit)
  return {0, tostring(scope), kind, tostring(retry), tostring(limit)}
end

-- Check every limit of both scopes; charge nothing until all of them admit.
local req_limit, req_left, tok_limit, tok_left, tok_reset = '', '', '', '', 0
local tats = {}
for scope = 1, 2 do
  local base = scope * 3 - 3
  local rpm, tpm, conc = tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6]), tonumber(ARGV[base + 7])
  if rpm > 0 then
    local log = KEYS[base + 1]
    redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('%d', now - PERIOD))
    local used = redis.call('ZCARD', log)
    if used >= rpm then
      local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
      return refuse(scope, 'requests', oldest[2] + PERIOD - now, rpm)
    end
    if req_left == '' or rpm - used - 1 < req_left then
      req_limit, req_left = rpm, rpm - used - 1  -- this request is now the newest entry
    end
  end
  if tpm > 0 then
    local interval = PERIOD / tpm
    local tat = tonumber(redis.call('GET', KEYS[base + 2])) or now
    if tat < now then tat = now end
    local after = tat + tokens * interval
    if after - now > PERIOD then
      return refuse(scope, 'tokens', after - now - PERIOD, tpm)
    end
    tats[scope] = after
    local left = math.floor((PERIOD - (after - now)) / interval)
    if tok_left == '' or left < tok_left then
      tok_limit, tok_left, tok_reset = tpm, left, math.ceil(after - now)
    end
  end
  if conc > 0 then
    local leases = KEYS[base + 3]
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now_ms)
    if redis.call('ZCARD', leases) >= conc then
      local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
      return refuse(scope, 'concurrency', first[2] - now, conc)
    end
  end
end

local log_ttl = string.format('%d', PERIOD + 1000)
local lease_ttl = tonumber(ARGV[3])
for scope = 1, 2 do
  local base = scope * 3 - 3
  if ARGV[base + 5] ~= '0' then
    redis.call('ZADD', KEYS[base + 1], now_ms, lease)
    redis.call('PEXPIRE', KEYS[base + 1], log_ttl)
  end
  local tat = tats[scope]
  if tat then
    local ttl = string.format('%d', math.ceil(tat - now) + 1000)
    redis.call('SET', KEYS[base + 2], tostring(tat), 'PX', ttl)
  end
  if ARGV[base + 7] ~= '0' then
    redis.call('ZADD', KEYS[base + 3], string.format('%d', now + lease_ttl), lease)
    redis.call('PEXPIRE', KEYS[base + 3], string.format('%d', lease_ttl + 1000))
  end
end

redis.call('SET', marker, ARGV[1], 'PX', ARGV[4])

return {1, req_limit, req_left, req_limit == '' and 0 or PERIOD, tok_limit, tok_left, tok_reset}
