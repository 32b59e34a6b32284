-- The seq fast path (see FAST_BODY in store/src/seq/). Runs after a pinned server_epoch().
local ep = server_epoch()
local groups = tonumber(ARGV[3])
local out = {}
local writes = {}
local k = 1
local a = 4 + groups
-- Reads only: an error here (say WRONGTYPE) changes nothing.
for g = 1, groups do
  local n = tonumber(ARGV[3 + g])
  local hash = KEYS[k]
  k = k + 1
  local h = redis.call('HMGET', hash, 'cur', 'max', 'step', 'at', 'ep')
  local exists = h[1] and h[2] and h[5] == ep
  local cur, max, first
  if exists then
    cur = tonumber(h[1])
    max = tonumber(h[2])
    first = cur
  end
  local records = {}
  local new = {}
  for _ = 1, n do
    local key = KEYS[k]
    local rec = records[key] or redis.call('GET', key)
    if rec then
      -- A record of another message (its fingerprint differs): refused, never acknowledged.
      local held = string.match(rec, '^%-?%d+:%-?%d+:#(%x*):')
      if held and held ~= '' and ARGV[a + 2] ~= '' and held ~= ARGV[a + 2] then
        out[#out + 1] = {4, rec, 0, 0, 0}
      else
        out[#out + 1] = {1, rec, 0, 0, 0}
      end
    elseif not exists then
      out[#out + 1] = {2, '', 0, 0, 0}
    elseif cur >= max then
      out[#out + 1] = {3, '', max, tonumber(h[3] or '0'), tonumber(h[4] or '0')}
    else
      cur = cur + 1
      rec = string.format('%d', cur) .. ':' .. ARGV[a + 1] .. ':#' .. ARGV[a + 2] .. ':' .. ARGV[a]
      records[key] = rec
      new[#new + 1] = key
      out[#out + 1] = {0, '', cur, 0, 0}
    end
    k = k + 1
    a = a + 3
  end
  if exists and cur > first then
    writes[#writes + 1] = {hash, cur - first, new, records}
  end
end
-- Move cur before writing any record: a failure after this point leaves a gap, never a record
-- naming a seq that cur could hand out again.
for _, w in ipairs(writes) do
  redis.call('HINCRBY', w[1], 'cur', w[2])
  if ARGV[2] ~= '0' then
    redis.call('PEXPIRE', w[1], ARGV[2])
  end
end
for _, w in ipairs(writes) do
  for _, key in ipairs(w[3]) do
    redis.call('SET', key, w[4][key], 'PX', ARGV[1])
  end
end
return out
