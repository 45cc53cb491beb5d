-- May event ARGV[1] of an ordered conversation be attempted now?
-- KEYS[1..6] as in line_admit.lua (sequence, next, waiting, ended, blocked, due)
-- ARGV[1] the event's sequence number
-- ARGV[2] its delivery JSON, kept if it must wait
-- ARGV[3] the conversation id
-- ARGV[4] how long (ms) a started event may take to end or start again
--         (a retry, a redelivery) before the pump publishes it again
-- Returns 1: its turn (kept as it now is until it ends, due again after
-- ARGV[4]); 0: held back, kept in the line; -1: it already ended (a
-- redelivered duplicate).
local seq = tonumber(ARGV[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
if seq < next or redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return -1
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if seq == next then
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[4]), ARGV[3])
  return 1
end
redis.call('ZADD', KEYS[5], 'NX', now, ARGV[3])
return 0
