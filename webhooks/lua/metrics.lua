-- Add one observation to the shared metrics, in totals and in its minute.
-- KEYS[1] totals   hash  field -> monotonic count (what /metrics serves)
-- KEYS[2] minute   hash  field -> count in this minute (what `webhooks stats` reads)
-- KEYS[3] labelled set   endpoints allowed their own label
-- ARGV[1] endpoint
-- ARGV[2] most endpoints with their own label; the rest share "other"
-- ARGV[3] seconds to keep the minute hash
-- ARGV[4..] pairs: field template "name\t\tlabel=value...", increment
--           the empty slot between the tabs receives the endpoint label
-- Returns the endpoint label used.
local label = ARGV[1]
if redis.call('SISMEMBER', KEYS[3], label) == 0 then
  if redis.call('SCARD', KEYS[3]) < tonumber(ARGV[2]) then
    redis.call('SADD', KEYS[3], label)
  else
    label = 'other'
  end
end
for i = 4, #ARGV, 2 do
  local name, rest = string.match(ARGV[i], '^([^\t]*)\t\t(.*)$')
  local field = name .. '\t' .. label .. '\t' .. rest
  redis.call('HINCRBYFLOAT', KEYS[1], field, ARGV[i + 1])
  redis.call('HINCRBYFLOAT', KEYS[2], field, ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return label
