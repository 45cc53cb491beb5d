-- Fold one attempt into an endpoint's health and decide, with hysteresis,
-- whether it is slow.
-- KEYS[1] health hash: ewma_ms, recent (last outcomes, newest last:
--         o = ok, e = error, t = timeout), slow (0/1), attempts, updated_ms
-- ARGV[1] duration_ms of the attempt
-- ARGV[2] outcome: o | e | t
-- ARGV[3] alpha of the moving average (0..1]
-- ARGV[4] slow_ms     become slow when the average exceeds this ...
-- ARGV[5] recover_ms  ... and fast again only once it is below this
-- ARGV[6] recent_n    how many outcomes "recent" keeps
-- ARGV[7] ttl_s       forget an endpoint not attempted for this long
-- Returns {slow, changed, new}: slow now (0/1), whether that flipped, and
-- whether this is the endpoint's first recorded attempt.
local h = redis.call('HMGET', KEYS[1], 'ewma_ms', 'recent', 'slow')
local new = 0
local ewma = tonumber(h[1])
if ewma == nil then
  new = 1
  ewma = tonumber(ARGV[1])
else
  local alpha = tonumber(ARGV[3])
  ewma = alpha * tonumber(ARGV[1]) + (1 - alpha) * ewma
end
local recent = (h[2] or '') .. ARGV[2]
local n = tonumber(ARGV[6])
if #recent > n then
  recent = string.sub(recent, #recent - n + 1)
end
local timed_out = string.find(recent, 't', 1, true) ~= nil
local was_slow = h[3] == '1'
local slow
if was_slow then
  slow = timed_out or ewma >= tonumber(ARGV[5])
else
  slow = timed_out or ewma > tonumber(ARGV[4])
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'ewma_ms', string.format('%.1f', ewma), 'recent', recent,
  'slow', slow and '1' or '0', 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
local changed = 0
if slow ~= was_slow then changed = 1 end
return {slow and 1 or 0, changed, new}
