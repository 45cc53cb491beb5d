-- Event ARGV[1] of an ordered conversation ended (delivered or dead-lettered):
-- move the line on, and hand out the event whose turn it now is.
-- KEYS[1..4] as in line_enter.lua (sequence, next, waiting, ended)
-- KEYS[5] blocked   zset conversation id -> since when (ms) its line waits
-- KEYS[6] due       zset conversation id -> when (ms) the pump publishes the
--                   handed-out event if its publish never happened
-- ARGV[1] the event's sequence number
-- ARGV[2] the conversation id
-- ARGV[3] how long (ms) the caller has to publish what is handed out
-- Returns {sequence, delivery JSON} of the event to publish now, or {}.
-- The event stays in KEYS[3] until line_released: publish first, then remove.
local seq = tonumber(ARGV[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
if seq < next then
  return {}  -- ended before (a duplicate): the line moved on then
end
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])  -- handed out earlier and never released
while redis.call('SREM', KEYS[4], tostring(next)) == 1 do
  next = next + 1
end
redis.call('SET', KEYS[2], next)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HLEN', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[5], ARGV[2])
else
  redis.call('ZADD', KEYS[5], now, ARGV[2])  -- a new head holds the rest back
end
local payload = redis.call('HGET', KEYS[3], tostring(next))
if not payload then
  return {}
end
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[3]), ARGV[2])
return {next, payload}
