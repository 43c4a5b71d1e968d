-- Keep the concurrency lease of a request still in flight: its expiry in both scopes' lease
-- sets moves to now + lease ttl, so a stream longer than the ttl keeps its slot. Only where it
-- is still a member: a lease settled (settle.lua) or released (release.lua) meanwhile is never
-- added back. Time comes from Redis (TIME), as in admission.lua.
--
-- KEYS: key leases, tenant leases (one hash slot: both under llmaas:{t:<tenant>})
-- ARGV: lease id, lease ttl ms
-- Reply: how many of the two sets still held the lease (0: nothing left to renew)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, ttl = ARGV[1], tonumber(ARGV[2])
local held = 0
for i = 1, 2 do
  if redis.call('ZSCORE', KEYS[i], lease) then
    redis.call('PEXPIRE', KEYS[i], ttl + 1000)  -- first: past maxmemory a script's first
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, lease)  -- write may not be one that grows
    held = held + 1
  end
end
return held
