# Sourced by dev/capacity.sh and dev/capacity-cluster.sh: reading a chatlog-consumer they started
# with `--http-listen 127.0.0.1:0` and stderr to a log file.

# consumer_http_addr PID LOG: the address the consumer logged ("http listening on …"), waiting up
# to 30 s for it (empty if it never came); exits 1, with the log's tail, if the consumer dies first.
consumer_http_addr() {
  local pid="$1" logf="$2" addr="" i
  for i in $(seq 1 300); do
    addr=$(sed -n 's/.*http listening on \([0-9.:]*\).*/\1/p' "$logf" | head -1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; exit 1; }
    sleep 0.1
  done
  echo "$addr"
}

# consumer_persisted ADDR: the records the consumer at ADDR has persisted and committed
# (`chatlog_consumer_records_total{outcome="persisted"}`).
consumer_persisted() {
  curl -s "http://$1/metrics" | awk '/^chatlog_consumer_records_total\{.*persisted/{s+=$NF} END{print s+0}'
}
