-- Get-or-lock of a cached entry (see store/src/cache/mod.rs). Runs after a pinned server_epoch().
-- KEYS[1] = the entry (a hash: v = value, e = epoch it was filled in, o = loader's token,
-- u = the loader's lease end in ms of Redis time, d = marked deleted).
-- ARGV[1] = the caller's token, ARGV[2] = lease in ms, ARGV[3] = '1' for the whole hash on a hit
-- (entries updated in place keep extra fields next to the value: Cache::get_entry).
-- Returns {1, value} (a value of this epoch; {1, {field, value, ...}} with ARGV[3]), {2} (another
-- loader holds an unexpired lease: wait), or {3} (the caller now owns the entry and loads it).
local v, e, o, u = unpack(redis.call('HMGET', KEYS[1], 'v', 'e', 'o', 'u'))
if v and e == server_epoch() then
  if ARGV[3] == '1' then
    return {1, redis.call('HGETALL', KEYS[1])}
  end
  return {1, v}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if o and tonumber(u) and tonumber(u) > now then
  return {2}
end
local lease = tonumber(ARGV[2])
redis.call('HDEL', KEYS[1], 'v', 'e')
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'u', now + lease)
-- A loader that dies leaves its lease to expire; the key itself goes soon after.
redis.call('PEXPIRE', KEYS[1], 2 * lease)
return {3}
