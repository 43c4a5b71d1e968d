-- Settle a group of requests of one API key, model and UTC day, each once: reconcile their
-- rate limits and append their usage records.
--
-- The first call with a given settlement id does its work; any later call carrying that id (a
-- retry after a lost reply, a replayed spill file) finds it already seen and skips it.
-- Settlements are applied in order, as one call each would apply them; what they share (the
-- token buckets, the lease sets, the day's totals, the expiries) is read and written once per
-- group, not once per settlement.
--
-- KEYS: 1 usage log (stream), 2 usage of the day (hash), 3 key tpm, 4 key leases, 5 tenant tpm,
--       6 tenant leases, 7.. one seen-marker per settlement (all under one tenant hash tag)
-- ARGV: 1 seen ttl ms, 2 window ms, 3 retention ms, 4 day hash expires at (Unix ms),
--       5..8 day hash fields (requests, prompt, completion, cached),
--       9 record fields per settlement (field/value strings; 0: the group has no records),
--       then per settlement: has limits (0/1), token delta (real - reserved), lease,
--       key tpm limit, tenant tpm limit (0 = none), key and tenant bucket's TAT right after
--       its admission charged it (ms; 0 = unknown); and, if the group has records,
--       prompt, completion, cached tokens and the record's field/value strings
-- Reply: how many settlements were applied (the rest had been before).
--
-- Cost: every redis.call costs ~2-3 µs here and every number turned into a string ~1 µs
-- (printf("%.17g"), see admission.lua), so per settlement this makes two calls (its marker,
-- its XADD) and formats nothing; the rest is per group.

local n = #KEYS - 6
local nf = tonumber(ARGV[9])
local stride = nf > 0 and 10 + nf or 7
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local period = tonumber(ARGV[2])

local tat, dirty = {}, {}  -- per scope: the bucket's TAT (false: none; nil: not read yet)
local rate = {}  -- per scope: the tpm the bucket's TAT is kept at (bucket.lua: "TAT:tpm")
local released = {{}, {}}  -- per scope: leases to remove
local logged = {}  -- where each applied record's arguments start
local applied = 0

for i = 1, n do
  local at = 9 + (i - 1) * stride
  if redis.call('SET', KEYS[6 + i], '1', 'NX', 'PX', ARGV[1]) then
    applied = applied + 1
    if ARGV[at + 1] == '1' then
      local delta, lease = tonumber(ARGV[at + 2]), ARGV[at + 3]
      for scope = 1, 2 do
        local limit = tonumber(ARGV[at + 3 + scope])
        if limit > 0 and delta ~= 0 then
          if tat[scope] == nil then
            tat[scope], rate[scope] = bucket_read(redis.call('GET', KEYS[1 + scope * 2]), limit)
          end
          -- Tokens take time at the rate the bucket is kept at: its tpm may have been changed
          -- since this one was admitted (admission.lua moved the bucket to the new one).
          local was, after, per_token = tat[scope], false, period / rate[scope]
          if delta > 0 then  -- used more than reserved: charged from now, as a new cost is
            after = math.max(was or now, now) + delta * per_token
          elseif was then
            -- Given back: no more of the reservation than the bucket still holds of it (its
            -- TAT then, less the time since, in tokens at the rate it was admitted at); one
            -- that outlived it drained out already, and giving it back again would make room
            -- that was never taken. A bucket moved to a lower tpm since kept at most a window
            -- of what it held (admission.lua): where this reservation lies in it is not known,
            -- and giving it back emptied a bucket still full at the new rate, so none is.
            local back, charged = -delta, tonumber(ARGV[at + 5 + scope])
            if rate[scope] < limit then
              back = 0
            elseif charged > 0 then
              back = math.min(back, math.max(0, charged - now) * limit / period)
            end
            after = was - back * per_token
          end
          if after then  -- a bucket moved: set while ahead of now, else emptied
            dirty[scope] = true
            tat[scope] = after > now and after
          end
        end
        local list = released[scope]
        list[#list + 1] = lease
      end
    end
    if nf > 0 then
      if #logged == 0 then  -- the first XADD trims the log to the retention
        local trim = string.format('%d', now - ARGV[3])
        redis.call('XADD', KEYS[1], 'MINID', '~', trim, '*', unpack(ARGV, at + 11, at + 10 + nf))
      else
        redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 11, at + 10 + nf))
      end
      logged[#logged + 1] = at
    end
  end
end

for scope = 1, 2 do
  local bucket = KEYS[1 + scope * 2]
  if dirty[scope] then
    bucket_write(redis.call, bucket, tat[scope], rate[scope], now)
  end
  if #released[scope] > 0 then
    redis.call('ZREM', KEYS[2 + scope * 2], unpack(released[scope]))
  end
end

if #logged > 0 then
  local counts  -- the day's totals grow by: requests, prompt, completion, cached tokens
  if #logged == 1 then  -- one record (a quiet moment): its own strings, nothing to format
    local at = logged[1]
    counts = {'1', ARGV[at + 8], ARGV[at + 9], ARGV[at + 10]}
  else
    local prompt, completion, cached = 0, 0, 0
    for _, at in ipairs(logged) do
      prompt = prompt + ARGV[at + 8]
      completion = completion + ARGV[at + 9]
      cached = cached + ARGV[at + 10]
    end
    counts = {string.format('%d', #logged), string.format('%d', prompt),
              string.format('%d', completion), string.format('%d', cached)}
  end
  local day = KEYS[2]
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  for metric = 1, 4 do
    if ARGV[4 + metric] ~= '' then  -- (a fine-tuning job's totals have two metrics)
      redis.call('HINCRBY', day, ARGV[4 + metric], counts[metric])
    end
  end
  redis.call('PEXPIREAT', day, ARGV[4])
end
return applied
