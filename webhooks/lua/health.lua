-- Fold attempts into an endpoint's health and decide, with hysteresis,
-- whether it is slow. Workers send a second's worth of attempts at once.
-- KEYS[1] health hash: ewma_ms, recent (last outcomes, newest last:
--         o = ok, e = error, t = timeout), slow (0/1), attempts, updated_ms
-- ARGV[1] alpha of the moving average (0..1]
-- ARGV[2] slow_ms     become slow when the average exceeds this ...
-- ARGV[3] recover_ms  ... and fast again only once it is below this
-- ARGV[4] recent_n    how many outcomes "recent" keeps
-- ARGV[5] ttl_s       forget an endpoint not attempted for this long
-- ARGV[6..] pairs, oldest first: duration_ms, outcome (o | e | t)
-- Returns {slow, changed, new}: slow now (0/1), whether that flipped, and
-- whether these are the endpoint's first recorded attempts.
local h = redis.call('HMGET', KEYS[1], 'ewma_ms', 'recent', 'slow', 'attempts')
local alpha = tonumber(ARGV[1])
local slow_ms = tonumber(ARGV[2])
local recover_ms = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local ewma = tonumber(h[1])
local new = ewma == nil and 1 or 0
local recent = h[2] or ''
local was_slow = h[3] == '1'
local slow = was_slow
for i = 6, #ARGV, 2 do
  local duration = tonumber(ARGV[i])
  if ewma == nil then
    ewma = duration
  else
    ewma = alpha * duration + (1 - alpha) * ewma
  end
  recent = recent .. ARGV[i + 1]
  if #recent > n then
    recent = string.sub(recent, #recent - n + 1)
  end
  local timed_out = string.find(recent, 't', 1, true) ~= nil
  if slow then
    slow = timed_out or ewma >= recover_ms
  else
    slow = timed_out or ewma > slow_ms
  end
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'ewma_ms', string.format('%.1f', ewma), 'recent', recent,
  'slow', slow and '1' or '0', 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000),
  'attempts', string.format('%d', (tonumber(h[4]) or 0) + (#ARGV - 5) / 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
local changed = 0
if slow ~= was_slow then changed = 1 end
return {slow and 1 or 0, changed, new}
