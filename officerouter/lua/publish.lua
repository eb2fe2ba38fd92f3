-- Number, keep and publish one message of an org, atomically.
--
-- KEYS[1] meta hash (epoch, seq)   KEYS[2] stream   KEYS[3] connection counts
-- KEYS[4] bans hash                KEYS[5] held roles hash
-- KEYS[6] the idempotency key's record (unused without a key)
-- ARGV[1] channel       ARGV[2] a fresh epoch, used when the org has no stream
-- ARGV[3] now (seconds) ARGV[4] stream length kept   ARGV[5] seconds kept
-- ARGV[6] frame before its seq   ARGV[7] frame after its seq
-- ARGV[8] the rest of the record header after its seq (JSON, closing brace)
-- ARGV[9] seconds a ban is remembered
-- ARGV[10] 1 for a broadcast, 0 for a direct message
-- ARGV[11] the request's fingerprint with an idempotency key, else ''
-- ARGV[12] seconds the idempotency key is remembered
-- then: n, n targets; m, m banned users; k, k pairs (user, role)
--
-- Returns {epoch, seq, delivered, delivered per target...}: delivered counts
-- the connections addressed in cluster presence when the message is numbered.
-- A key already used returns {'once', what was recorded} and does nothing.
local meta, stream, counts = KEYS[1], KEYS[2], KEYS[3]
if ARGV[11] ~= '' then
  local recorded = redis.call('GET', KEYS[6])
  if recorded then
    return {'once', recorded}
  end
end
local epoch = current_epoch(meta, stream, ARGV[2], tonumber(ARGV[5]))
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local record = 'N{"e":"' .. epoch .. '","s":' .. seq .. ',"at":' .. ARGV[3] .. ARGV[8]
  .. '\n' .. ARGV[6] .. seq .. ARGV[7]
redis.call('XADD', stream, 'MAXLEN', ARGV[4], seq .. '-0', 'm', record)
local ttl = tonumber(ARGV[5])
redis.call('EXPIRE', meta, ttl)
redis.call('EXPIRE', stream, ttl)
local result = {epoch, seq, 0}
local i = 13
local n = tonumber(ARGV[i])
if ARGV[10] == '1' then
  result[3] = tonumber(redis.call('HGET', counts, '*') or '0')
end
for j = 1, n do
  local c = tonumber(redis.call('HGET', counts, 'u:' .. ARGV[i + j]) or '0')
  result[3 + j] = c
  if ARGV[10] ~= '1' then
    result[3] = result[3] + c
  end
end
i = i + n + 1
local m = tonumber(ARGV[i])
for j = 1, m do
  redis.call('HSET', KEYS[4], ARGV[i + j], ARGV[3])
end
if m > 0 then
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[9]))
end
i = i + m + 1
local k = tonumber(ARGV[i])
for j = 1, k do
  local user = ARGV[i + 2 * j - 1]
  redis.call('HSET', KEYS[5], user, ARGV[i + 2 * j])
  if ARGV[10] == '1' then
    -- The subject of a role change always hears of it: a pending guest's
    -- connections too, though not in the audience.
    local all = tonumber(redis.call('HGET', counts, 'u:' .. user) or '0')
    local admitted = tonumber(redis.call('HGET', counts, 'a:' .. user) or '0')
    result[3] = result[3] + all - admitted
  end
end
if k > 0 then
  redis.call('EXPIRE', KEYS[5], ttl)
end
if ARGV[11] ~= '' then
  local answer = {}
  for j = 3, #result do
    answer[#answer + 1] = result[j]
  end
  redis.call('SET', KEYS[6], ARGV[11] .. '|' .. seq .. '|' .. table.concat(answer, ','),
    'EX', tonumber(ARGV[12]))
end
redis.call('PUBLISH', ARGV[1], record)
return result
