-- Set or remove this node's presence entry for one user of an org, keep the
-- org's connection counts, and tell the org's other nodes.
--
-- KEYS[1] presence entries   KEYS[2] connection counts   KEYS[3] this node's orgs
-- ARGV[1] field (node \0 user)   ARGV[2] user   ARGV[3] entry, '' to remove
-- ARGV[4] channel   ARGV[5] org   ARGV[6] seconds the keys outlive their last write
--
-- An entry is "<connections>|<role>|<position JSON>".  Counts: 'u:<user>' every
-- connection of the user, 'a:<user>' those admitted (not a pending guest), '*'
-- the org's admitted connections (the audience of a broadcast).
local function parse(entry)
  if not entry or entry == '' then
    return 0, 0
  end
  local c, role = string.match(entry, '^(%d+)|([^|]*)|')
  c = tonumber(c)
  if role == 'pending_guest' then
    return c, 0
  end
  return c, c
end
local pres, counts = KEYS[1], KEYS[2]
local old_c, old_a = parse(redis.call('HGET', pres, ARGV[1]))
local new_c, new_a = parse(ARGV[3])
if ARGV[3] == '' then
  redis.call('HDEL', pres, ARGV[1])
else
  redis.call('HSET', pres, ARGV[1], ARGV[3])
end
local ttl = tonumber(ARGV[6])
if new_c ~= old_c then
  if redis.call('HINCRBY', counts, 'u:' .. ARGV[2], new_c - old_c) <= 0 then
    redis.call('HDEL', counts, 'u:' .. ARGV[2])
  end
end
if new_a ~= old_a then
  redis.call('HINCRBY', counts, '*', new_a - old_a)
  if redis.call('HINCRBY', counts, 'a:' .. ARGV[2], new_a - old_a) <= 0 then
    redis.call('HDEL', counts, 'a:' .. ARGV[2])
  end
end
redis.call('EXPIRE', pres, ttl)
redis.call('EXPIRE', counts, ttl)
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('EXPIRE', KEYS[3], ttl)
-- The entry has no NUL (JSON escapes it) and comes first: the user id may.
redis.call('PUBLISH', ARGV[4], 'P' .. ARGV[3] .. '\0' .. ARGV[1])
return 1
