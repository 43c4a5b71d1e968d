-- Admit a group of requests of one API key, each against every limit of two scopes (key,
-- tenant) at once: all or nothing for each, in order, as one call each would.
--
-- Requests per window use an exact sliding log: a sorted set of admitted request ids scored by
-- time; entries older than the window fall out, and a request is admitted while fewer than the
-- limit remain. So no window of that length ever holds more than the limit: no edge burst.
-- Tokens per window use GCRA (the generic cell rate algorithm), which takes variable costs and
-- refunds: one key holds the theoretical arrival time (TAT) in ms and the tpm it is kept at
-- ("TAT:tpm"); a cost of n moves it by n * window / tpm, admitted while TAT - now <= window;
-- capacity returns smoothly. A changed tpm moves the TAT to the new rate (bucket() below).
-- Concurrency is a sorted set of leases scored by their expiry, so a dead gateway's slots
-- come back by themselves. Time comes from Redis (TIME), never from a gateway's clock.
--
-- The lease id names the admission: an admitted one leaves a marker holding its tokens for a
-- window, so the same call sent again (a retry after a timeout) charges nothing twice, and
-- release.lua can undo it once. A marker release.lua left ("x") cancels an admission that
-- arrives after the gateway gave up on it.
--
-- Concurrent requests of one key share a call (gateway/redis_pipe.py gathers them while the
-- previous batch is on the wire): what they share (counting the logs and lease sets, the token
-- buckets, the trims and expiries) is read and written once per call; each request costs its
-- marker, its log and lease entries.
--
-- Out of memory: a script's first write decides. Redis refuses a command that may grow memory
-- (ZADD, SET) while a script has not written yet, and lets every later one through. So nothing
-- is written before the first admission's ZADD or SET: the logs and lease sets are counted in
-- their live range (ZCOUNT) and trimmed only once something was admitted. (They were trimmed
-- first, a write that frees memory: past maxmemory every admission then went through, where
-- failure_mode should decide.)
--
-- KEYS: key rpm, key tpm, key leases, tenant rpm, tenant tpm, tenant leases,
--       then one marker per request
-- ARGV: lease ttl ms, window ms (60000 in production), then per scope (key, tenant): rpm, tpm,
--       max concurrency (0 = no limit at that scope); then per request: tokens, lease id
-- Reply: one per request, in order:
--        {1, req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms,
--         slots_free, key_tat, tenant_tat} (integers; "" for a kind no scope limits; slots_free:
--        of the scope with the fewest concurrency slots left, after this one; *_tat: the
--        scope's token bucket's TAT once this one is charged, ms rounded up, 0 = no tpm there:
--        settle.lua gives back no more of the reservation than the bucket still holds)
--     or {0, scope (1 key, 2 tenant), kind ("requests"|"tokens"|"concurrency"), retry_ms, limit}
--        (numbers as strings: Redis would truncate fractions)
--     or {2, marker}: this lease was seen before (tokens: admitted then; "x": released)
--
-- Cost: this runs for every request, so it is written for Redis's Lua: every number that
-- becomes a string (a number passed to redis.call goes through printf("%.17g")) costs ~1 µs
-- on a 2-core VM, as much as a whole GET. So times are whole milliseconds formatted once with
-- %d, and the admitted reply is integers (no conversion at all). Scores and expiries of the
-- request logs and lease sets are in ms. A TAT keeps its fraction of a ms, written with %.17g:
-- Lua's own tostring keeps 14 digits, which at ~1.7e12 ms is 0.1 ms, and under a large tpm a
-- small request moves the TAT by less (it was rounded away, or up).
--
-- A request log's times are whole ms (Redis's TIME cut down): an entry stamped T may have come
-- up to 1 ms after T, so it leaves once now - T > window, never at exactly a window.

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local now_ms = string.format('%d', now)  -- once: lease sets are trimmed by it, request logs scored by it
local lease_ttl, PERIOD = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease_until = string.format('%d', now + lease_ttl)

local rpm, tpm, conc = {}, {}, {}
for scope = 1, 2 do
  local base = scope * 3
  rpm[scope], tpm[scope], conc[scope] = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
end

-- What the group shares, read at its first use: entries in each request log and lease set,
-- each token bucket's TAT.
local used, tat, held = {}, {}, {}
local admitted = 0
local live_from = string.format('%d', now - PERIOD)  -- a request log's entries still in the window
local live_leases = '(' .. now_ms  -- a lease set's entries not yet expired
local function log_used(scope)
  if used[scope] == nil then
    used[scope] = redis.call('ZCOUNT', KEYS[scope * 3 - 2], live_from, '+inf')
  end
  return used[scope]
end
local rescaled = {}  -- per scope: the bucket was read at another tpm and moved to this one
local function bucket(scope)
  if tat[scope] == nil then
    -- "TAT:tpm" (bucket.lua). A TAT kept at another tpm (the limit was changed since) is
    -- moved to this one: what is ahead of now is tokens at that rate, so it takes their time
    -- at this rate, at most a window (or what it was, if more: usage past the reservation). So
    -- a raised tpm has room at once for what it adds, a lowered one waits for tokens used past
    -- it, as a sliding window would.
    local at, was = bucket_read(redis.call('GET', KEYS[scope * 3 - 1]), tpm[scope])
    if at and was and was ~= tpm[scope] and at > now then
      local ahead = at - now
      at = now + math.min(ahead * was / tpm[scope], math.max(ahead, PERIOD))
      rescaled[scope] = true
    end
    tat[scope] = at
  end
  local at = tat[scope]
  if not at or at < now then return now end
  return at
end
local function leases_held(scope)
  if held[scope] == nil then
    held[scope] = redis.call('ZCOUNT', KEYS[scope * 3], live_leases, '+inf')
  end
  return held[scope]
end

local function refuse(scope, kind, retry, limit)
  return {0, tostring(scope), kind, tostring(retry), string.format('%d', limit)}
end

local function admit(charge, lease, marker)
  local tokens = tonumber(charge)
  local seen = redis.call('GET', marker)
  if seen then
    return {2, seen}
  end
  -- Check every limit of both scopes; charge nothing until all of them admit. Refused, the
  -- answer is the limit that frees last (its wait is the one that admits a retry): the first
  -- refusal found said an rpm's 10 s where a tpm needed 47 more, so a client that waited as
  -- told was refused again. A full concurrency limit's wait (its first lease's expiry) is an
  -- upper bound, not a time a slot frees: it is the answer only if nothing else refuses.
  local req_limit, req_left, tok_limit, tok_left, tok_reset, free = '', '', '', '', 0, ''
  local after = {}
  local refused, full  -- {scope, kind, wait, limit}: the longest rpm / tpm wait; a full slot set
  for scope = 1, 2 do
    local r, tp, c = rpm[scope], tpm[scope], conc[scope]
    if r > 0 then
      local n = log_used(scope)
      if n >= r then  -- room once n - r + 1 entries left (more than one: the limit was lowered)
        local log = KEYS[scope * 3 - 2]
        local leaving = redis.call('ZRANGEBYSCORE', log, live_from, '+inf', 'WITHSCORES', 'LIMIT', n - r, 1)
        local wait = leaving[2] + PERIOD + 1 - now
        if not refused or wait > refused[3] then refused = {scope, 'requests', wait, r} end
      elseif req_left == '' or r - n - 1 < req_left then
        req_limit, req_left = r, r - n - 1  -- this request is now the newest entry
      end
    end
    if tp > 0 then
      local interval = PERIOD / tp
      local next_tat = bucket(scope) + tokens * interval
      if next_tat - now > PERIOD then
        local wait = next_tat - now - PERIOD
        if not refused or wait > refused[3] then refused = {scope, 'tokens', wait, tp} end
      else
        after[scope] = next_tat
        local left = math.floor((PERIOD - (next_tat - now)) / interval)
        if tok_left == '' or left < tok_left then
          tok_limit, tok_left, tok_reset = tp, left, math.ceil(next_tat - now)
        end
      end
    end
    if c > 0 then
      local h = leases_held(scope)
      if h >= c then
        if not full then
          local first = redis.call('ZRANGEBYSCORE', KEYS[scope * 3], live_leases, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
          full = {scope, 'concurrency', first[2] - now, c}
        end
      elseif free == '' or c - h - 1 < free then
        free = c - h - 1
      end
    end
  end
  refused = refused or full
  if refused then
    return refuse(refused[1], refused[2], refused[3], refused[4])
  end
  for scope = 1, 2 do
    if rpm[scope] > 0 then
      redis.call('ZADD', KEYS[scope * 3 - 2], now_ms, lease)
      used[scope] = used[scope] + 1
    end
    if after[scope] then
      tat[scope] = after[scope]
    end
    if conc[scope] > 0 then
      redis.call('ZADD', KEYS[scope * 3], lease_until, lease)
      held[scope] = held[scope] + 1
    end
  end
  redis.call('SET', marker, charge, 'PX', ARGV[2])
  admitted = admitted + 1
  local key_tat, tenant_tat = after[1] and math.ceil(after[1]) or 0, after[2] and math.ceil(after[2]) or 0
  return {1, req_limit, req_left, req_limit == '' and 0 or PERIOD, tok_limit, tok_left, tok_reset, free,
          key_tat, tenant_tat}
end

local replies = {}
for i = 1, #KEYS - 6 do
  local at = 7 + i * 2
  replies[i] = admit(ARGV[at], ARGV[at + 1], KEYS[6 + i])
end

-- Trims and expiries, once, if any request was admitted (each admitted one added to every log
-- and lease set and moved every bucket its scope limits): what left the window or expired out,
-- the logs a window on, the lease sets a ttl on, each bucket until it is empty.
if admitted == 0 then
  -- A bucket moved to a changed tpm is kept so even if nothing was admitted: read again from
  -- its old rate, it would drain at that rate. pcall: past maxmemory Redis refuses this first
  -- write of the script, and the refusals above stand (the next call moves it again).
  for scope = 1, 2 do
    if rescaled[scope] then
      bucket_write(redis.pcall, KEYS[scope * 3 - 1], tat[scope], tpm[scope], now)
    end
  end
  return replies
end
local log_ttl, leases_ttl = string.format('%d', PERIOD + 1000), string.format('%d', lease_ttl + 1000)
for scope = 1, 2 do
  if rpm[scope] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[scope * 3 - 2], '-inf', '(' .. live_from)
    redis.call('PEXPIRE', KEYS[scope * 3 - 2], log_ttl)
  end
  if conc[scope] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[scope * 3], '-inf', now_ms)
    redis.call('PEXPIRE', KEYS[scope * 3], leases_ttl)
  end
  if tpm[scope] > 0 then
    bucket_write(redis.call, KEYS[scope * 3 - 1], tat[scope], tpm[scope], now)
  end
end
return replies
