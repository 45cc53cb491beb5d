-- Remove republished deliveries from their line, unless parked again since.
-- KEYS[4] parked   zset webhook id -> place in line (ms)
-- KEYS[5] payloads hash webhook id -> parked delivery JSON
-- ARGV[2i-1] webhook id
-- ARGV[2i]   the parked_id of its payload as taken ('' for an id found
--            without payload)
-- A republished task can run, find no room and park again before the pump
-- gets here; that park wrote a new parked_id, and removing it would lose the
-- delivery (the queue no longer holds it). Returns how many were removed.
local removed = 0
for i = 1, #ARGV, 2 do
  local payload = redis.call('HGET', KEYS[5], ARGV[i])
  local current = ''
  if payload then
    current = cjson.decode(payload)['parked_id'] or ''
  end
  if current == ARGV[i + 1] then
    redis.call('ZREM', KEYS[4], ARGV[i])
    redis.call('HDEL', KEYS[5], ARGV[i])
    removed = removed + 1
  end
end
return removed
