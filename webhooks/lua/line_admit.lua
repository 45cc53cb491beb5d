-- Publish an event of an ordered conversation: number it, keep it in the
-- line until a worker starts it, and say whether it goes to the broker now.
-- KEYS[1] sequence  string: the last sequence number given out
-- KEYS[2] next      string: the sequence number allowed now (absent: 1)
-- KEYS[3] waiting   hash sequence -> delivery JSON, every event not yet started
-- KEYS[4] ended     set (unused here)
-- KEYS[5] blocked   zset conversation id -> since when (ms) its line holds events back
-- KEYS[6] due       zset conversation id -> when (ms) the pump publishes the
--                   line's next event again unless a worker has started it
-- ARGV[1] the delivery JSON, without its sequence (the hash key is its number)
-- ARGV[2] the conversation id
-- ARGV[3] how long (ms) a published next event has to be started
-- Returns {sequence, 1}: publish it now; {sequence, 0}: it waits its turn.
local seq = redis.call('INCR', KEYS[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
redis.call('HSET', KEYS[3], seq, ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if seq <= next then
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[3]), ARGV[2])
  return {seq, 1}
end
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[2])
return {seq, 0}
