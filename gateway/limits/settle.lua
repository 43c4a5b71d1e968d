-- Settle one admitted request: move the token buckets of both scopes by the difference
-- between real and reserved tokens (a refund when negative), and release its leases.
--
-- KEYS: key tpm, key leases, tenant tpm, tenant leases
-- ARGV: token delta (real - reserved), lease id, key tpm limit, tenant tpm limit (0 = none),
--       window ms

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local delta, lease = tonumber(ARGV[1]), ARGV[2]
local PERIOD = tonumber(ARGV[5])

for scope = 1, 2 do
  local bucket, leases, limit = KEYS[scope * 2 - 1], KEYS[scope * 2], tonumber(ARGV[2 + scope])
  if limit > 0 and delta ~= 0 then
    local tat = tonumber(redis.call('GET', bucket))
    if tat then
      local new_tat = tat + delta * PERIOD / limit
      if new_tat <= now then
        redis.call('DEL', bucket)
      else
        redis.call('SET', bucket, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
      end
    elseif delta > 0 then
      local new_tat = now + delta * PERIOD / limit
      redis.call('SET', bucket, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
    end
  end
  redis.call('ZREM', leases, lease)
end
return 1
