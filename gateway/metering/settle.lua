-- Settle one request, once: reconcile its rate limits and append its usage record.
--
-- The first call with a given record id does the work; any later call (a retry after a lost
-- reply, a replayed spill file) finds the id already seen and changes nothing.
--
-- KEYS: 1 seen-marker, 2 usage log (stream), 3 usage of the day (hash),
--       4 key tpm, 5 key leases, 6 tenant tpm, 7 tenant leases (all under one tenant hash tag)
-- ARGV: 1 seen ttl ms,
--       2 has limits (0/1), 3 token delta (real - reserved), 4 lease, 5 key tpm limit,
--       6 tenant tpm limit (0 = none), 7 window ms,
--       8 has record (0/1), 9 retention ms, 10 day hash expires at (Unix ms),
--       11..14 day hash fields (requests, prompt, completion, cached),
--       15..17 prompt, completion, cached tokens,
--       18.. the record's field/value pairs
--
-- Cost: numbers that become strings go through printf("%.17g"), ~1 µs each on a 2-core VM
-- (see admission.lua), so the few this script makes are whole milliseconds formatted with %d.

if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)

if ARGV[2] == '1' then
  local delta, lease, period = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[7])
  for scope = 1, 2 do
    local bucket, leases = KEYS[2 + scope * 2], KEYS[3 + scope * 2]
    local limit = tonumber(ARGV[4 + scope])
    if limit > 0 and delta ~= 0 then
      local tat = tonumber(redis.call('GET', bucket))
      local new_tat = nil
      if tat then
        new_tat = tat + delta * period / limit
      elseif delta > 0 then
        new_tat = now + delta * period / limit
      end
      if new_tat and new_tat > now then
        local ttl = string.format('%d', math.ceil(new_tat - now) + 1000)
        redis.call('SET', bucket, tostring(new_tat), 'PX', ttl)
      elseif new_tat then
        redis.call('DEL', bucket)
      end
    end
    redis.call('ZREM', leases, lease)
  end
end

if ARGV[8] == '1' then
  local log, day = KEYS[2], KEYS[3]
  redis.call('XADD', log, 'MINID', '~', string.format('%d', now - ARGV[9]), '*', unpack(ARGV, 18))
  redis.call('PEXPIRE', log, ARGV[9])
  redis.call('HINCRBY', day, ARGV[11], '1')
  redis.call('HINCRBY', day, ARGV[12], ARGV[15])
  redis.call('HINCRBY', day, ARGV[13], ARGV[16])
  redis.call('HINCRBY', day, ARGV[14], ARGV[17])
  redis.call('PEXPIREAT', day, ARGV[10])
end
return 1
