-- Appends messages to a session's window (see APPEND_LUA in store/src/window.rs). Runs after epoch.lua.
-- KEYS[3] (optional): the session's latest (store/src/repo/latest.rs), raised to this call's
-- highest (seq, version): max wins, so a replay or a late batch never lowers it.
local key = KEYS[1]
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local ep = server_epoch()
if redis.call('GET', KEYS[2]) ~= ep then
  redis.call('DEL', key)
  redis.call('SET', KEYS[2], ep)
end
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local head = tonumber(top[2])
local low = nil
if head ~= nil then
  low = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
end
local times = {}
for i = 3, #ARGV, 2 do
  times[ARGV[i]] = (times[ARGV[i]] or 0) + 1
end
local fresh = {}
for i = 3, #ARGV, 2 do
  local seq = ARGV[i]
  local member = ARGV[i + 1]
  if low ~= nil and tonumber(seq) < low then
    -- below the window: its row is in the table
  elseif times[seq] == 1 and (head == nil or tonumber(seq) > head) then
    fresh[#fresh + 1] = seq
    fresh[#fresh + 1] = member
    if #fresh >= 1000 then
      redis.call('ZADD', key, unpack(fresh))
      fresh = {}
    end
  else
    local version = string.sub(member, 1, 16)
    local keep_existing = false
    for _, existing in ipairs(redis.call('ZRANGEBYSCORE', key, seq, seq)) do
      if existing ~= member then
        if string.sub(existing, 1, 16) > version then
          keep_existing = true
        else
          redis.call('ZREM', key, existing)
        end
      end
    end
    if not keep_existing then
      redis.call('ZADD', key, seq, member)
    end
  end
end
if #fresh > 0 then
  redis.call('ZADD', key, unpack(fresh))
end
if KEYS[3] then
  local best = nil
  for i = 3, #ARGV, 2 do
    if best == nil then
      best = i
    else
      local a, b = tonumber(ARGV[i]), tonumber(ARGV[best])
      if a > b or (a == b and string.sub(ARGV[i + 1], 1, 16) > string.sub(ARGV[best + 1], 1, 16)) then
        best = i
      end
    end
  end
  if best ~= nil then
    local seq, member = ARGV[best], ARGV[best + 1]
    local version = string.sub(member, 1, 16)
    local s, t, e = unpack(redis.call('HMGET', KEYS[3], 's', 't', 'e'))
    if e ~= ep then
      -- Not of this epoch (or none): this batch's highest is only a lower bound, so the entry
      -- is partial until a reader completes it from CQL (latest_fill.lua).
      redis.call('DEL', KEYS[3])
      redis.call('HSET', KEYS[3], 's', seq, 't', version, 'm', member, 'e', ep, 'p', '1')
    elseif not tonumber(s) or tonumber(s) < tonumber(seq) or (tonumber(s) == tonumber(seq) and (t or '') < version) then
      redis.call('HSET', KEYS[3], 's', seq, 't', version, 'm', member)
    end
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[3], ttl)
    end
  end
end
local n = redis.call('ZCARD', key)
if n > size then
  redis.call('ZREMRANGEBYRANK', key, 0, n - size - 1)
  n = size
end
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return n
