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
--     or {0, scope (1 key, 2 tenant), kind ("requests"|"tokens"|"concurrency"), retry_ms, limit}
--        (numbers as strings: Redis would truncate fractions)
--     or {2, marker}: this lease was seen before (tokens: admitted then; "x": released)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tokens = tonumber(ARGV[1])
local lease, lease_ttl = ARGV[2], tonumber(ARGV[3])
local PERIOD = tonumber(ARGV[4])

local seen = redis.call('GET', KEYS[7])
if seen then
  return {2, seen}
end

local function sliding(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - PERIOD)
  local used = redis.call('ZCARD', key)
  if used >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return false, tonumber(oldest[2]) + PERIOD - now, 0, 0
  end
  local reset = PERIOD  -- this request is now the newest entry
  return true, 0, limit - used - 1, reset
end

local function gcra(key, limit, cost)
  local interval = PERIOD / limit
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local allowed = new_tat - now <= PERIOD
  local retry = allowed and 0 or (new_tat - now - PERIOD)
  local after = allowed and new_tat or tat
  local remaining = math.floor((PERIOD - (after - now)) / interval)
  return allowed, new_tat, retry, remaining, after - now
end

local checks = {}
local best = {req = {nil, nil, 0}, tok = {nil, nil, 0}}
local function note(slot, limit, remaining, reset)
  local b = best[slot]
  if b[2] == nil or remaining < b[2] then best[slot] = {limit, remaining, reset} end
end

for scope = 1, 2 do
  local base = (scope - 1) * 3
  local rpm, tpm, conc = tonumber(ARGV[5 + base]), tonumber(ARGV[6 + base]), tonumber(ARGV[7 + base])
  if rpm > 0 then
    local ok, retry, remaining, reset = sliding(KEYS[base + 1], rpm)
    if not ok then
      return {0, tostring(scope), 'requests', tostring(retry), tostring(rpm)}
    end
    table.insert(checks, {KEYS[base + 1], 'log'})
    note('req', rpm, remaining, reset)
  end
  if tpm > 0 then
    local ok, new_tat, retry, remaining, reset = gcra(KEYS[base + 2], tpm, tokens)
    if not ok then
      return {0, tostring(scope), 'tokens', tostring(retry), tostring(tpm)}
    end
    table.insert(checks, {KEYS[base + 2], new_tat})
    note('tok', tpm, remaining, reset)
  end
  if conc > 0 then
    local key = KEYS[base + 3]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= conc then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      return {0, tostring(scope), 'concurrency', tostring(tonumber(first[2]) - now), tostring(conc)}
    end
    table.insert(checks, {key, nil})
  end
end

for _, c in ipairs(checks) do
  if c[2] == 'log' then
    redis.call('ZADD', c[1], now, lease)
    redis.call('PEXPIRE', c[1], PERIOD + 1000)
  elseif c[2] then
    redis.call('SET', c[1], tostring(c[2]), 'PX', math.ceil(c[2] - now) + 1000)
  else
    redis.call('ZADD', c[1], now + lease_ttl, lease)
    redis.call('PEXPIRE', c[1], lease_ttl + 1000)
  end
end

redis.call('SET', KEYS[7], ARGV[1], 'PX', PERIOD)

local r, k = best.req, best.tok
return {1, tostring(r[1] or ''), tostring(r[2] or ''), tostring(r[3]),
        tostring(k[1] or ''), tostring(k[2] or ''), tostring(k[3])}
