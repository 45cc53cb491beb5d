-- Give an attempt slot back, holding the endpoint back: what
-- Limiter.release_into queues as a plain ZADD when there is no hold.
-- KEYS[1] window (unused), KEYS[2] inflight, KEYS[3] hold
-- ARGV[1] token
-- ARGV[2] hold_ms  how long the receiver asked us to wait (Retry-After)
-- Returns 2 if a waiting line asked to be woken by this release (the lease
-- released and ~wake disarmed), else 1 or 0; see acquire.lua for inflight.
local woke = redis.call('ZADD', KEYS[2], 'XX', 'CH', 0, ARGV[1], -1, '~wake')
local hold_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = tonumber(redis.call('GET', KEYS[3]) or '0')
if now + hold_ms > current then
  redis.call('SET', KEYS[3], now + hold_ms, 'PX', hold_ms)
end
return woke
