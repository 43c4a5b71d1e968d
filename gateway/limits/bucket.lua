-- A token bucket's stored value, read and written alike by admission.lua, settle.lua and
-- release.lua: each is sent to Redis with this file in front of it (gateway/limits/lua.py).
--
-- A bucket is "TAT:tpm": the GCRA theoretical arrival time (ms, with its fraction of a ms) and
-- the tpm it is kept at, so that a changed limit is seen (admission.lua moves the bucket to
-- the new one). A bare TAT was written before the tpm was kept: it is taken as at `tpm`.

-- The bucket's TAT (false: none) and the tpm it is kept at, from its value (nil: no key).
local function bucket_read(value, tpm)
  if not value then
    return false, tpm
  end
  local colon = string.find(value, ':', 1, true)
  if colon then
    return tonumber(string.sub(value, 1, colon - 1)) or false, tonumber(string.sub(value, colon + 1))
  end
  return tonumber(value) or false, tpm
end

-- Keep `key` at `tat` (at `rate`) while it is ahead of `now`, until it has drained and a second
-- more; an empty bucket is deleted. `call`: redis.call, or redis.pcall where a refused write
-- must not fail the script. A TAT keeps its fraction of a ms with %.17g (admission.lua).
local function bucket_write(call, key, tat, rate, now)
  if tat and tat > now then
    local ttl = string.format('%d', math.ceil(tat - now) + 1000)
    call('SET', key, string.format('%.17g:%d', tat, rate), 'PX', ttl)
  else
    call('DEL', key)
  end
end

