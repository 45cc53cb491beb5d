-- Take one attempt slot for an endpoint, or say how long to wait.
-- KEYS[1] window   zset  attempt token -> start ms (sliding window log),
--                        and ~w -> minus the window's length (ms)
-- KEYS[2] inflight zset  attempt token -> lease expiry ms (0 once released),
--                        and ~wake: -2 if a release should wake the line, else -1
-- KEYS[3] hold     string no attempt before this ms (receiver's Retry-After)
-- KEYS[4] parked   zset   the endpoint's waiting line
-- KEYS[5] payloads (unused), KEYS[6] limits (unused)
-- KEYS[7] fresh    string present while window and inflight expire late enough
-- ARGV[1] limit          attempts allowed per window
-- ARGV[2] window_ms
-- ARGV[3] max_concurrency
-- ARGV[4] lease_ms       how long a slot survives a worker that died holding it
-- ARGV[5] token          unique per attempt
-- ARGV[6] from_line      1 if the pump released this delivery from the line
-- Returns {1, remaining, reset_ms} when granted,
--         {0, wait_ms, reason} when not (reason: hold | line | concurrency | rate).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])

-- Usually no hold or line exists and the keys expire late enough: one
-- EXISTS tells all three, each key named as often as its weight (1, 2, 4).
local gate = redis.call('EXISTS', KEYS[3], KEYS[4], KEYS[4], KEYS[7], KEYS[7], KEYS[7], KEYS[7])
local fresh = gate >= 4
local line = gate % 4 >= 2
if gate % 2 == 1 then
  local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
  if hold > now then
    return {0, hold - now, 'hold'}
  end
end
-- A fresh delivery joins the back of a non-empty line instead of taking
-- the slot a waiting one is about to get: otherwise a steady stream of new
-- events would starve the line.
if line and ARGV[6] ~= '1' then
  return {0, 1, 'line'}
end

-- Live leases only: released (0) and expired ones (their worker died) are
-- not counted, and are swept now and then, not on every call.
local flying = redis.call('ZCOUNT', KEYS[2], '(' .. now, '(+inf')
if flying >= cap then
  -- Worst case the earliest lease expires; a release wakes waiters sooner.
  local first = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {0, tonumber(first[2]) - now, 'concurrency'}
end

-- Attempts still in the window are counted, not first swept out: those
-- that left it go in one of 16 grants, below.
local inside = '(' .. (now - window)
local count = redis.call('ZCOUNT', KEYS[1], inside, '+inf')
if count >= limit then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], inside, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {0, tonumber(oldest[2]) + window - now, 'rate'}
end

-- ~w holds minus the longest window of any conversation sharing the
-- endpoint (LT), for readers and for the sweep: a 1 s conversation's grant
-- must not sweep out what a 1 min one on the same endpoint still counts.
-- CH: the reply is 2 when ~w is new or lengthened.
local window_new = redis.call('ZADD', KEYS[1], 'LT', 'CH', now, ARGV[5], -window, '~w') == 2
local longest = window
if window_new or not fresh or string.sub(ARGV[5], 1, 1) == '0' then
  longest = -tonumber(redis.call('ZSCORE', KEYS[1], '~w'))
end
-- While a line waits, this attempt's release is to wake it (~wake armed);
-- otherwise ~wake is only added, disarmed, where missing. Either way the
-- reply counts ~wake as added when the set is new.
local created
if line then
  created = redis.call('ZADD', KEYS[2], now + lease, ARGV[5], -2, '~wake') == 2
else
  created = redis.call('ZADD', KEYS[2], 'NX', now + lease, ARGV[5], -1, '~wake') == 2
end

-- Redis runs noeviction: both sets must vanish once the endpoint is idle, and
-- must outlive every entry that still counts. Rather than an expiry on every
-- call, each is set to twice the longest life of an entry (span) when the
-- set is new or once fresh has lapsed; fresh lives one span, so until it
-- lapses every expiry is at least one span away. ~w and ~wake keep the sets
-- from emptying (and being created anew) between attempts.
local span = math.max(longest, lease)
if not fresh or window_new then
  redis.call('PEXPIRE', KEYS[1], 2 * span)
  redis.call('PEXPIRE', KEYS[2], 2 * span)
  redis.call('SET', KEYS[7], '1', 'PX', span)
else
  if created then redis.call('PEXPIRE', KEYS[2], 2 * span) end
end
-- Attempts that left the window, and released and dead leases, go in one
-- of 16 grants (tokens are random hex); ~w and ~wake (negative) stay.
if not fresh or string.sub(ARGV[5], 1, 1) == '0' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now - longest)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, now)
end

-- The budget grows again when the oldest attempt leaves the window: worth a
-- lookup only when this attempt used the last of it. Otherwise every attempt
-- counted now has left the window one window from now.
local reset = window
if count + 1 >= limit and count > 0 then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], inside, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  reset = tonumber(oldest[2]) + window - now
end
return {1, limit - count - 1, reset}
