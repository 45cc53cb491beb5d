-- Publish an event of an ordered conversation: number it, keep it in the
-- line until a worker starts it, and say whether it goes to the broker now.
-- KEYS[1] sequence  string: the last sequence number given out
-- KEYS[2] next      string: the sequence number allowed now (absent: 1)
-- KEYS[3] waiting   hash sequence -> delivery JSON, every event not yet started
-- KEYS[4] ended     set (unused here)
-- KEYS[5] blocked   string: since when (ms) the line holds events back
-- KEYS[6] due       string: when (ms) the pump publishes the line's next event
--                   again unless a worker has started it
-- ARGV[1] the delivery JSON, without its sequence (the hash key is its number)
-- ARGV[2] the conversation id (unused: the line's keys are its own)
-- ARGV[3] how long (ms) a published next event has to be started
-- Returns {fresh_due, blocked_since, sequence, 1}: publish it now;
-- {fresh_due, blocked_since, sequence, 0}: it waits its turn. For the
-- caller's global indexes: fresh_due is the due time set on a line that
-- had none, blocked_since the time set on a line that was not blocked (else 0).
local seq = redis.call('INCR', KEYS[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
redis.call('HSET', KEYS[3], seq, ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if seq <= next then
  local fresh = redis.call('EXISTS', KEYS[6]) == 0
  local due = now + tonumber(ARGV[3])
  redis.call('SET', KEYS[6], due)
  return {fresh and due or 0, 0, seq, 1}
end
local blocks = redis.call('SET', KEYS[5], now, 'NX')  -- nil: it was blocked already
return {0, blocks and now or 0, seq, 0}
