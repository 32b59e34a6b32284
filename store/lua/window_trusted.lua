-- Whether a window was written in the serving Redis's epoch (see TRUSTED_BODY in
-- store/src/window.rs). Runs after a pinned server_epoch().
if redis.call('GET', KEYS[1]) == server_epoch() then
  return 1
end
return 0
