-- May event ARGV[1] of an ordered conversation be delivered now?
-- KEYS[1] sequence  string: the last sequence number given out (unused here)
-- KEYS[2] next      string: the sequence number allowed now (absent: 1)
-- KEYS[3] waiting   hash sequence -> delivery JSON, events held back
-- KEYS[4] ended     set of sequence numbers that ended before their turn
-- KEYS[5] blocked   zset conversation id -> since when (ms) its line waits
-- ARGV[1] the event's sequence number
-- ARGV[2] its delivery JSON, kept if it must wait
-- ARGV[3] the conversation id
-- Returns 1: its turn, deliver it; 0: held back (kept in KEYS[3]);
-- -1: it already ended (a redelivered duplicate): do not send it again.
local seq = tonumber(ARGV[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
if seq < next or redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return -1
end
if seq == next then
  return 1
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[3])
return 0
