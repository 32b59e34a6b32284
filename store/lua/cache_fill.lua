-- Fill of a cached entry by its loader (see store/src/cache/mod.rs). Runs after a pinned
-- server_epoch(). KEYS[1] = the entry; ARGV[1] = the loader's token, ARGV[2] = the value (empty:
-- give the lease back without a value), ARGV[3] = TTL in ms, ARGV[4] = '1' to drop every other
-- field too (the in-place updates of an entry read with Cache::get_entry: the loader read them all).
-- Fills only while the token still owns the entry: a write since the lock (cache_mark.lua) removed
-- the owner, and a value loaded before that write must not be cached. Returns 1 if done, 0 if not.
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'o', 'u')
  return 1
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HDEL', KEYS[1], 'o', 'u', 'd')
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'e', server_epoch())
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
