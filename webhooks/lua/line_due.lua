-- The pump looks at a line that the due index named: is its next event due
-- to be published again? Claims it if so (one pump gets it).
-- KEYS[1..6] as in line_admit.lua (sequence, next, waiting, ended, blocked, due)
-- ARGV[1] how long (ms) the handed-out event has to be started
-- Returns {due, blocked_since, sequence[, delivery JSON]}: due 0 when the
-- line's next event is not kept (nothing to publish: the index entry is
-- stale), else the line's due time (ms), moved on by ARGV[1] when the event
-- is handed out; blocked_since 0 when nothing is held back.
local next = tonumber(redis.call('GET', KEYS[2]) or '1')
local blocked = tonumber(redis.call('GET', KEYS[5]) or '0')
local payload = redis.call('HGET', KEYS[3], tostring(next))
if not payload then
  redis.call('DEL', KEYS[6])
  return {0, blocked, next}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- No due time with the next event kept: a line written before lines kept
-- their own; it is due now.
local due = tonumber(redis.call('GET', KEYS[6]) or '0')
if due > now then
  return {due, blocked, next}
end
due = now + tonumber(ARGV[1])
redis.call('SET', KEYS[6], due)
return {due, blocked, next, payload}
