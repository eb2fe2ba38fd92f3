-- Everything a node needs to serve an org it has not served yet, at one instant.
--
-- KEYS[1] meta   KEYS[2] stream   KEYS[3] bans   KEYS[4] held roles
-- KEYS[5] presence entries
-- ARGV[1] a fresh epoch, used when the org has no stream
-- ARGV[2] how many of the newest records to return   ARGV[3] seconds kept
-- ARGV[4] the prefix of node liveness keys
--
-- Returns {epoch, seq, records (newest first), bans, roles, presence, dead nodes}.
local meta, stream = KEYS[1], KEYS[2]
local epoch = current_epoch(meta, stream, ARGV[1], tonumber(ARGV[3]))
local seq = redis.call('HGET', meta, 'seq')
local records = {}
local limit = tonumber(ARGV[2])
if limit > 0 then
  for _, item in ipairs(redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)) do
    records[#records + 1] = item[2][2]
  end
end
local entries = redis.call('HGETALL', KEYS[5])
local alive, dead, presence = {}, {}, {}
for j = 1, #entries, 2 do
  local field = entries[j]
  local node = string.match(field, '^([^%z]*)%z')
  if node then
    if alive[node] == nil then
      alive[node] = redis.call('EXISTS', ARGV[4] .. node) == 1
      if not alive[node] then
        dead[#dead + 1] = node
      end
    end
    if alive[node] then
      presence[#presence + 1] = field
      presence[#presence + 1] = entries[j + 1]
    end
  end
end
return {epoch, seq, records, redis.call('HGETALL', KEYS[3]),
        redis.call('HGETALL', KEYS[4]), presence, dead}
