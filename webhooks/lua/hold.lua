-- Hold every attempt to an endpoint back until a receiver's Retry-After has
-- passed; a hold only ever extends, never shortens. Run on its own, before
-- the pipeline that gives the attempt's slot back (Limiter.release_into), so
-- no attempt slips in between, and so a script cache emptied by a restart or
-- failover reloads it (a pipeline on Redis Cluster would not).
-- KEYS[1] hold     string no attempt before this ms
-- ARGV[1] hold_ms  how long the receiver asked us to wait
-- Returns the hold's end (ms, Redis' clock).
local hold_ms = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + hold_ms > current then
  redis.call('SET', KEYS[1], now + hold_ms, 'PX', hold_ms)
  return now + hold_ms
end
return current
