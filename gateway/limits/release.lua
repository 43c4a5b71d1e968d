-- Release one admission the gateway gave up on (its client was told the limiter was
-- unavailable), once: whatever admission.lua charged for it is given back, and if it has not
-- run yet it never will.
--
-- The marker admission.lua left holds the tokens it reserved; this script replaces it with "x"
-- for a window, which tells a later release that there is nothing left to do and a late
-- admission that it was cancelled. The lease leaves the request logs and the lease sets
-- whatever the marker said (ZREM changes nothing twice), so a slot is freed even after the
-- marker has expired. Tokens go back as in settle.lua, with delta = -reserved.
--
-- KEYS: marker, key rpm, key tpm, key leases, tenant rpm, tenant tpm, tenant leases
-- ARGV: lease id, window ms, key tpm limit, tenant tpm limit (0 = none)
-- Reply: "refunded" (the admission had run), "cancelled" (it had not), "released" (done before)

local lease, period = ARGV[1], tonumber(ARGV[2])
-- The lease leaves first: a write that frees memory, so that past maxmemory (where Redis
-- refuses a script's first write that may grow memory, and no later one) a release still frees
-- its slot and marks its lease.
for scope = 1, 2 do
  redis.call('ZREM', KEYS[scope * 3 - 1], lease)
  redis.call('ZREM', KEYS[scope * 3 + 1], lease)
end
local marker = redis.call('SET', KEYS[1], 'x', 'GET', 'PX', period)
if marker == 'x' then
  return 'released'
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tokens = tonumber(marker)
for scope = 1, 2 do
  local bucket = KEYS[scope * 3]
  local limit = tonumber(ARGV[2 + scope])
  local value = tokens and limit > 0 and redis.call('GET', bucket)
  local tat, rate = bucket_read(value, limit)
  if tat then
    -- The tokens go back at the rate the bucket is kept at (none from a bucket moved to a
    -- lower tpm since: it kept at most a window of what it held, this reservation's place in
    -- it unknown; as settle.lua)
    local back = rate < limit and 0 or tokens * period / rate
    bucket_write(redis.call, bucket, tat - back, rate, now)
  end
end
return tokens and 'refunded' or 'cancelled'
