-- The seq fast path (see FAST_BODY in store/src/seq/). Runs after a pinned server_epoch().
-- Per request, the cost that counts is Lua's: every redis.call and every table the reply holds.
-- So the records are read with one MGET, and an allocated request's reply is its seq alone (an
-- integer); only the rare answers (duplicate, conflict, missing, used up) are tables.
local ep = server_epoch()
local groups = tonumber(ARGV[3])
-- The idempotency records of every request, in KEYS order, in one call.
local record_keys = {}
local k = 1
for g = 1, groups do
  local n = tonumber(ARGV[3 + g])
  for i = 1, n do
    record_keys[#record_keys + 1] = KEYS[k + i]
  end
  k = k + n + 1
end
local held_records = {}
if #record_keys > 0 then
  held_records = redis.call('MGET', unpack(record_keys))
end
local out = {}
local writes = {}
local r = 1
local a = 4 + groups
k = 1
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
    local rec = records[key] or held_records[r]
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
      out[#out + 1] = cur
    end
    k = k + 1
    r = r + 1
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
