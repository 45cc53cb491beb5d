-- Give an attempt slot back, optionally holding the endpoint back.
-- KEYS[1] window (unused), KEYS[2] inflight, KEYS[3] hold, KEYS[4] parked
-- ARGV[1] token
-- ARGV[2] hold_ms  0, or how long the receiver asked us to wait (Retry-After)
-- Returns the number of parked deliveries, so the caller can wake them.
redis.call('ZREM', KEYS[2], ARGV[1])
local hold_ms = tonumber(ARGV[2])
if hold_ms > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local current = tonumber(redis.call('GET', KEYS[3]) or '0')
  if now + hold_ms > current then
    redis.call('SET', KEYS[3], now + hold_ms, 'PX', hold_ms)
  end
end
return redis.call('ZCARD', KEYS[4])
