-- Marks a cached entry deleted after its row changed (see store/src/cache/mod.rs): the value goes,
-- and so does any loader's ownership, so a loader that read the old row cannot fill it.
-- KEYS[1] = the entry; ARGV[1] = how long the mark stays, in ms.
redis.call('HDEL', KEYS[1], 'v', 'e', 'o', 'u')
redis.call('HSET', KEYS[1], 'd', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
