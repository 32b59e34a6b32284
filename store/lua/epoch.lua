-- server_epoch(): this Redis instance's epoch, `run_id:master_replid` (see store/src/epoch.rs).
-- Prefixed to every script that checks an epoch.
local function server_epoch()
  local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  if not run_id or not replid then
    error('chatlog: INFO shows no run_id or master_replid; the Redis epoch cannot be checked')
  end
  return run_id .. ':' .. replid
end
