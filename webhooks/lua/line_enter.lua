-- May event ARGV[1] of an ordered conversation be attempted now?
-- KEYS[1..6] as in line_admit.lua (sequence, next, waiting, ended, blocked, due)
-- ARGV[1] the event's sequence number
-- ARGV[2] its delivery JSON, kept if it must wait
-- ARGV[3] the conversation id (unused: the line's keys are its own)
-- ARGV[4] how long (ms) a started event may take to end or start again
--         (a retry, a redelivery) before the pump publishes it again
-- Returns {fresh_due, blocked_since, verdict} (the first two as in
-- line_admit.lua); verdict 1: its turn (kept as it now is until it ends,
-- due again after ARGV[4]); 0: held back, kept in the line; -1: it already
-- ended (a redelivered duplicate).
local seq = tonumber(ARGV[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
if seq < next or redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return {0, 0, -1}
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if seq == next then
  local fresh = redis.call('EXISTS', KEYS[6]) == 0
  local due = now + tonumber(ARGV[4])
  redis.call('SET', KEYS[6], due)
  return {fresh and due or 0, 0, 1}
end
local blocks = redis.call('SET', KEYS[5], now, 'NX')  -- nil: it was blocked already
return {0, blocks and now or 0, 0}
