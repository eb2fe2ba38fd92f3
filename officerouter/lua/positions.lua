-- One tick of a node's position updates in an org: remember each user's last
-- position in their presence entry and publish the batch once.
--
-- KEYS[1] presence entries
-- ARGV[1] channel   ARGV[2] the message   then pairs (field, entry)
for j = 3, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[j]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1])
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
