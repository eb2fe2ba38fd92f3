-- Remove a dead node's presence from every org it served, once its liveness
-- key has expired, and tell each org's nodes.
--
-- KEYS[1] the node's liveness key   KEYS[2] the node's orgs
-- ARGV[1] node   ARGV[2] key prefix ("<prefix>:")
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local prefix = ARGV[1] .. '\0'
for _, org in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local base = ARGV[2] .. '{' .. org .. '}:'
  local pres, counts = base .. 'pres', base .. 'count'
  for _, field in ipairs(redis.call('HKEYS', pres)) do
    if string.sub(field, 1, #prefix) == prefix then
      local entry = redis.call('HGET', pres, field)
      local c, role = string.match(entry, '^(%d+)|([^|]*)|')
      c = tonumber(c)
      local user = string.sub(field, #prefix + 1)
      if c > 0 then
        if redis.call('HINCRBY', counts, 'u:' .. user, -c) <= 0 then
          redis.call('HDEL', counts, 'u:' .. user)
        end
        if role ~= 'pending_guest' then
          redis.call('HINCRBY', counts, '*', -c)
          if redis.call('HINCRBY', counts, 'a:' .. user, -c) <= 0 then
            redis.call('HDEL', counts, 'a:' .. user)
          end
        end
      end
      redis.call('HDEL', pres, field)
    end
  end
  redis.call('PUBLISH', base .. 'channel', 'G' .. ARGV[1])
end
redis.call('DEL', KEYS[2])
return 1
