-- Put a delivery in its endpoint's waiting line (idempotent per webhook id),
-- and have the next release of a slot wake the line (arm ~wake, if leases
-- are held: see acquire.lua).
-- KEYS[2] inflight zset
-- KEYS[4] parked   zset webhook id -> place in line (ms)
-- KEYS[5] payloads hash webhook id -> parked delivery JSON
-- ARGV[1] webhook id
-- ARGV[2] payload JSON
-- KEYS[6] limits   string "limit window_ms max_concurrency", for the pump
-- ARGV[3] place in line (ms); 0 = the back of the line, now
-- ARGV[4] the endpoint's limits, as stored in KEYS[6]
-- Returns the length of the line.
local place = tonumber(ARGV[3])
if place <= 0 then
  local t = redis.call('TIME')
  place = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('ZADD', KEYS[4], 'NX', place, ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
redis.call('SET', KEYS[6], ARGV[4])
redis.call('ZADD', KEYS[2], 'XX', -2, '~wake')
return redis.call('ZCARD', KEYS[4])
