-- Fill of a session's latest (see store/src/repo/latest.rs) by a reader that loaded it from CQL.
-- Runs after a pinned server_epoch(). KEYS[1] = the latest hash (s = max seq, t = its version:
-- 16 hex digits of server_time_us, m = the window member of the message, e = epoch, p = partial).
-- ARGV[1] = the seq read ('0': the session has no message), ARGV[2] = the member ('' if none),
-- ARGV[3] = TTL in ms (0: none).
-- Max wins: a fill never lowers what the consumer wrote meanwhile. An entry of another epoch is
-- not trusted (Redis went back in time) and is replaced; a partial one (created by the consumer,
-- which knew only its batch) becomes complete, as the max of both. Returns {s, t} as stored.
local key = KEYS[1]
local ep = server_epoch()
local s, t, e = unpack(redis.call('HMGET', key, 's', 't', 'e'))
local seq = tonumber(ARGV[1])
local version = string.sub(ARGV[2], 1, 16)
if e ~= ep or not tonumber(s) or tonumber(s) < seq or (tonumber(s) == seq and (t or '') < version) then
  redis.call('DEL', key)
  redis.call('HSET', key, 's', ARGV[1], 't', version, 'm', ARGV[2], 'e', ep)
  s, t = ARGV[1], version
else
  redis.call('HDEL', key, 'p')
end
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', key, ARGV[3])
end
return {s, t}
