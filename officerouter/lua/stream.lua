-- Shared by the scripts that read or number an org's stream (prepended to them
-- when they are loaded): the org's epoch, starting a new stream when it has none
-- or when Redis lost the stream but kept its counter.
local function current_epoch(meta, stream, fresh, ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
    if last > 0 and redis.call('EXISTS', stream) == 0 then
      epoch = nil
    end
  end
  if not epoch then
    epoch = fresh
    redis.call('DEL', meta, stream)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
    redis.call('EXPIRE', meta, ttl)
  end
  return epoch
end
