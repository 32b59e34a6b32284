-- Appends messages to a session's window (see APPEND_LUA in store/src/window.rs). Runs after epoch.lua.
-- KEYS[3] (optional): the session's latest (store/src/repo/latest.rs), raised to this call's
-- highest (seq, version): max wins, so a replay or a late batch never lowers it.
-- ARGV: size, ttl, mode, then (seq, member) pairs. Mode 'p' (proven): the entries are the table's
-- newest rows of the session, a complete run ending at its head, so they may start an empty
-- window. Any other mode: an empty window is left empty and the call returns -1 — the entries
-- alone do not prove they are the session's newest messages (a late or replayed record, a
-- mutation of an old message) nor its newest state (a mutation stored in an earlier batch); the
-- writer then starts the window from the table (store/src/window_start.rs).
local key = KEYS[1]
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local proven = ARGV[3] == 'p'
-- seqs[k] as a number (to compare), texts[k] as given (a score: Lua would print a number above
-- 10^14 in exponent form).
local seqs, texts, members = {}, {}, {}
for i = 4, #ARGV, 2 do
  local k = #seqs + 1
  texts[k] = ARGV[i]
  seqs[k] = tonumber(ARGV[i])
  members[k] = ARGV[i + 1]
end
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
-- An empty window is started only from proof (see the top).
local refused = head == nil and not proven
-- How many entries go to the window (none when refused; the latest below takes them all).
local entries = #seqs
if refused then
  entries = 0
end
local times = {}
for k = 1, #seqs do
  times[seqs[k]] = (times[seqs[k]] or 0) + 1
end
local fresh = {}
-- Seqs at or below the head (replays, late arrivals, mutations) and seqs given twice: compared
-- with what the window holds at their seq, in their order.
local slow = {}
local lo, hi = nil, nil
for k = 1, entries do
  local n = seqs[k]
  if low ~= nil and n < low then
    -- below the window: its row is in the table
  elseif times[n] == 1 and (head == nil or n > head) then
    fresh[#fresh + 1] = texts[k]
    fresh[#fresh + 1] = members[k]
    if #fresh >= 1000 then
      redis.call('ZADD', key, unpack(fresh))
      fresh = {}
    end
  else
    slow[#slow + 1] = k
    if lo == nil or n < seqs[lo] then lo = k end
    if hi == nil or n > seqs[hi] then hi = k end
  end
end
if #fresh > 0 then
  redis.call('ZADD', key, unpack(fresh))
end
if #slow > 0 then
  -- The members at the slow seqs read first (bounded by the window's size), then the rule per
  -- entry, unchanged: an existing member of a higher version stays
  -- and the entry is dropped, the others at its seq give way to it. Only the difference between
  -- before and after is written, in bulk.
  local at = {}
  local before = {}
  local function read(range)
    for j = 1, #range, 2 do
      local n = tonumber(range[j + 1])
      at[n] = at[n] or {}
      table.insert(at[n], range[j])
      before[range[j]] = true
    end
  end
  -- Dense (a replay, a late run of seqs): one read of the range. Sparse (a few mutations spread
  -- over a long window): one read per distinct seq, so the cost follows the entries, not the
  -- window's size.
  local distinct, first = 0, {}
  for _, k in ipairs(slow) do
    if not first[seqs[k]] then
      first[seqs[k]] = k
      distinct = distinct + 1
    end
  end
  if seqs[hi] - seqs[lo] + 1 <= 4 * distinct then
    read(redis.call('ZRANGEBYSCORE', key, texts[lo], texts[hi], 'WITHSCORES'))
  else
    for _, k in pairs(first) do
      read(redis.call('ZRANGEBYSCORE', key, texts[k], texts[k], 'WITHSCORES'))
    end
  end
  local text_of = {}
  for _, k in ipairs(slow) do
    local n = seqs[k]
    local member = members[k]
    local version = string.sub(member, 1, 16)
    local keep_existing = false
    local present = false
    text_of[member] = texts[k]
    local kept = {}
    for _, existing in ipairs(at[n] or {}) do
      if existing == member then
        present = true
        kept[#kept + 1] = existing
      elseif string.sub(existing, 1, 16) > version then
        keep_existing = true
        kept[#kept + 1] = existing
      end
    end
    if not keep_existing and not present then
      kept[#kept + 1] = member
    end
    at[n] = kept
  end
  local after = {}
  local adds = {}
  for _, list in pairs(at) do
    for _, m in ipairs(list) do
      after[m] = true
      if not before[m] then
        adds[#adds + 1] = text_of[m]
        adds[#adds + 1] = m
        if #adds >= 1000 then
          redis.call('ZADD', key, unpack(adds))
          adds = {}
        end
      end
    end
  end
  local removes = {}
  for m, _ in pairs(before) do
    if not after[m] then
      removes[#removes + 1] = m
      if #removes >= 1000 then
        redis.call('ZREM', key, unpack(removes))
        removes = {}
      end
    end
  end
  if #adds > 0 then
    redis.call('ZADD', key, unpack(adds))
  end
  if #removes > 0 then
    redis.call('ZREM', key, unpack(removes))
  end
end
if KEYS[3] then
  local best = nil
  for k = 1, #seqs do
    if best == nil then
      best = k
    else
      local a, b = seqs[k], seqs[best]
      if a > b or (a == b and string.sub(members[k], 1, 16) > string.sub(members[best], 1, 16)) then
        best = k
      end
    end
  end
  if best ~= nil then
    local seq, member = texts[best], members[best]
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
if refused then
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  return -1
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
