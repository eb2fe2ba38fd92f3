-- Redis came back with an org's stream behind what the processes delivered (a
-- restart that lost its last writes): numbers would be given twice.  End the
-- stream, so that the next step starts a new epoch and every client recovers.
--
-- KEYS[1] meta   KEYS[2] stream
-- ARGV[1] the epoch seen   ARGV[2] the last seq a process delivered
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1]
    and tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
