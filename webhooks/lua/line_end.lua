-- Event ARGV[1] of an ordered conversation ended (delivered or dead-lettered):
-- move the line on, and hand out the event whose turn it now is.
-- KEYS[1..6] as in line_admit.lua (sequence, next, waiting, ended, blocked, due)
-- ARGV[1] the event's sequence number
-- ARGV[2] the conversation id (unused: the line's keys are its own)
-- ARGV[3] how long (ms) the handed-out event has to be started
-- Returns {fresh_due, blocked_since} (as in line_admit.lua), followed by
-- the sequence and delivery JSON of the event to publish now, if any.
-- It stays kept (and due) until a worker starts it: should its publish or
-- its message be lost, the pump publishes it again.
local seq = tonumber(ARGV[1])
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
if seq < next then
  return {0, 0}  -- ended before (a duplicate): the line moved on then
end
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if seq > next then
  -- Ended out of turn (a publish that failed): skipped when its turn comes.
  local head = redis.call('HEXISTS', KEYS[3], tostring(next))
  if redis.call('HLEN', KEYS[3]) - head <= 0 then
    redis.call('DEL', KEYS[5])  -- it was the last one held back
  end
  return {0, 0}
end
while redis.call('SREM', KEYS[4], tostring(next)) == 1 do
  next = next + 1
end
redis.call('SET', KEYS[2], next)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local payload = redis.call('HGET', KEYS[3], tostring(next))
local behind = redis.call('HLEN', KEYS[3]) - (payload and 1 or 0)
local blocked = 0
if behind > 0 then
  -- A new head holds the rest back; blocked is reported only when the line was not.
  if redis.call('EXISTS', KEYS[5]) == 0 then
    blocked = now
  end
  redis.call('SET', KEYS[5], now)
else
  redis.call('DEL', KEYS[5])
end
if not payload then
  redis.call('DEL', KEYS[6])
  return {0, blocked}
end
local fresh = redis.call('EXISTS', KEYS[6]) == 0
local due = now + tonumber(ARGV[3])
redis.call('SET', KEYS[6], due)
return {fresh and due or 0, blocked, next, payload}
