-- In-place update of one monotonic field of a cached entry (see Cache::update_in_place in
-- store/src/cache/mod.rs). Runs after a pinned server_epoch(), after the database write.
-- KEYS[1] = the entry; ARGV[1] = the field, ARGV[2] = its new value: decimal integers joined by
-- ':' (each part only ever grows), ARGV[3] = most fields the entry may hold, ARGV[4] = mark TTL ms.
-- Only a value filled in this epoch, with no loader, is updated, part by part to the maximum
-- (so updates in any order end at the maximum). Anything else — no value, another epoch, a
-- loader at work, too many fields, a malformed field — is marked deleted exactly like
-- cache_mark.lua, which also removes a loader's token: a loader that read the database before
-- this write cannot fill. Returns 1 if updated in place, 0 if marked.
local key = KEYS[1]
local v, e, o = unpack(redis.call('HMGET', key, 'v', 'e', 'o'))
if v and not o and e == server_epoch() then
  local cur = redis.call('HGET', key, ARGV[1])
  if not cur then
    if redis.call('HLEN', key) < tonumber(ARGV[3]) then
      redis.call('HSET', key, ARGV[1], ARGV[2])
      return 1
    end
  else
    local old, new = {}, {}
    for part in string.gmatch(cur, '[^:]+') do old[#old + 1] = part end
    for part in string.gmatch(ARGV[2], '[^:]+') do new[#new + 1] = part end
    if #old == #new then
      local ok = true
      for i = 1, #new do
        local a, b = tonumber(old[i]), tonumber(new[i])
        if not a or not b then
          ok = false
        elseif a > b then
          new[i] = old[i]
        end
      end
      if ok then
        redis.call('HSET', key, ARGV[1], table.concat(new, ':'))
        return 1
      end
    end
  end
end
redis.call('HDEL', key, 'v', 'e', 'o', 'u')
redis.call('HSET', key, 'd', '1')
redis.call('PEXPIRE', key, ARGV[4])
return 0
