-- Pick the parked deliveries that the endpoint has room for right now.
-- KEYS[1] window, KEYS[2] inflight, KEYS[3] hold, KEYS[4] parked, KEYS[5] payloads
-- KEYS[6] limits   "limit window_ms max_concurrency", as the last park stored them
-- ARGV[1] max_batch
-- Returns {-1} when nothing is parked, {wait_ms} when there is no room yet,
-- else {0, id1, payload1, place1, id2, payload2, place2, ...}, place being
-- the delivery's place in line (ms), for it to keep if it is parked again.
-- Nothing is removed here: the caller removes what it has republished, so a
-- crash in between can only duplicate, never lose. The next release of a
-- slot wakes the line again (~wake armed: see acquire.lua).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZCARD', KEYS[4]) == 0 then
  return {-1}
end
redis.call('ZADD', KEYS[2], 'XX', -2, '~wake')
local stored = redis.call('GET', KEYS[6])
if not stored then
  return redis.error_reply('parked deliveries without stored limits')
end
local limit, window, cap = string.match(stored, '(%d+) (%d+) (%d+)')
limit, window, cap = tonumber(limit), tonumber(window), tonumber(cap)
local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
if hold > now then
  return {hold - now}
end
local inside = '(' .. (now - window)
local free_slots = cap - redis.call('ZCOUNT', KEYS[2], '(' .. now, '(+inf')
local free_budget = limit - redis.call('ZCOUNT', KEYS[1], inside, '+inf')
local n = math.min(free_slots, free_budget, tonumber(ARGV[1]))
if n <= 0 then
  if free_budget <= 0 then
    local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], inside, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    return {math.max(1, tonumber(oldest[2]) + window - now)}
  end
  local first = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {math.max(1, tonumber(first[2]) - now)}
end
local head = redis.call('ZRANGE', KEYS[4], 0, n - 1, 'WITHSCORES')
local result = {0}
for i = 1, #head, 2 do
  table.insert(result, head[i])
  table.insert(result, redis.call('HGET', KEYS[5], head[i]) or '')
  table.insert(result, head[i + 1])
end
return result
