-- Admit one request against every limit of two scopes (key, tenant) at once: all or nothing.
--
-- Requests and tokens per minute use GCRA (the generic cell rate algorithm): one key per limit
-- holds the theoretical arrival time (TAT) in ms. A cost of n moves TAT by n * period / limit;
-- it is admitted while TAT - now <= period. No fixed window, so no double burst at an edge.
-- Concurrency is a sorted set of leases scored by their expiry, so a dead gateway's slots
-- come back by themselves. Time comes from Redis (TIME), never from a gateway's clock.
--
-- KEYS: key rpm, key tpm, key leases, tenant rpm, tenant tpm, tenant leases
-- ARGV: tokens, lease id, lease ttl ms, then per scope (key, tenant): rpm, tpm, max concurrency
--       (0 = no limit at that scope)
-- Reply: {1, req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms}
--     or {0, scope (1 key, 2 tenant), kind ("requests"|"tokens"|"concurrency"), retry_ms, limit}
--        (numbers as strings: Redis would truncate fractions)

local PERIOD = 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tokens = tonumber(ARGV[1])
local lease, lease_ttl = ARGV[2], tonumber(ARGV[3])

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
  local rpm, tpm, conc = tonumber(ARGV[4 + base]), tonumber(ARGV[5 + base]), tonumber(ARGV[6 + base])
  for i, spec in ipairs({{rpm, 1, 'requests', 'req'}, {tpm, tokens, 'tokens', 'tok'}}) do
    local limit, cost, kind, slot = spec[1], spec[2], spec[3], spec[4]
    if limit > 0 then
      local key = KEYS[base + i]
      local ok, new_tat, retry, remaining, reset = gcra(key, limit, cost)
      if not ok then
        return {0, tostring(scope), kind, tostring(retry), tostring(limit)}
      end
      table.insert(checks, {key, new_tat})
      note(slot, limit, remaining, reset)
    end
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
  if c[2] then
    redis.call('SET', c[1], tostring(c[2]), 'PX', math.ceil(c[2] - now) + 1000)
  else
    redis.call('ZADD', c[1], now + lease_ttl, lease)
    redis.call('PEXPIRE', c[1], lease_ttl + 1000)
  end
end

local r, k = best.req, best.tok
return {1, tostring(r[1] or ''), tostring(r[2] or ''), tostring(r[3]),
        tostring(k[1] or ''), tostring(k[2] or ''), tostring(k[3])}
