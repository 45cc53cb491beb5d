-- May event ARGV[1] of an ordered conversation be attempted now?
-- KEYS[1..6] as in line_admit.lua (sequence, next, waiting, ended, blocked, due)
-- ARGV[1] the event's sequence number
-- ARGV[2] its delivery JSON, kept if it must wait
-- ARGV[3] the conversation id
-- Returns 1: its turn (it is started: no longer kept, nor due); 0: held
-- back, kept in the line; -1: it already ended (a redelivered duplicate).
local seq = tonumber(ARGV[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
if seq < next or redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return -1
end
if seq == next then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[3])
  return 1
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[5], 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[3])
return 0
