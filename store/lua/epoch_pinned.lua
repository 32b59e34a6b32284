-- chatlog pinned server_epoch(), run {run_id}, load {load} (see pinned_epoch_lua in store/src/epoch.rs)
local function server_epoch()
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  if not replid then
    error('chatlog: INFO shows no master_replid; the Redis epoch cannot be checked')
  end
  return '{run_id}:' .. replid
end
