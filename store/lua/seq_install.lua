-- Installs a reserved seq segment (see INSTALL_LUA in store/src/seq/). Runs after epoch.lua.
local ep = server_epoch()
local h = redis.call('HMGET', KEYS[1], 'cur', 'max', 'ep')
local exists = h[1] and h[2] and h[3] == ep
if not exists then
  if ARGV[6] ~= '1' then
    return 0
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'cur', ARGV[1], 'max', ARGV[2], 'step', ARGV[3], 'at', ARGV[4],
    'ep', ep)
else
  if tonumber(ARGV[1]) > tonumber(h[1]) then
    redis.call('HSET', KEYS[1], 'cur', ARGV[1])
  end
  if tonumber(ARGV[2]) > tonumber(h[2]) then
    redis.call('HSET', KEYS[1], 'max', ARGV[2], 'step', ARGV[3], 'at', ARGV[4])
  end
end
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
