#!/usr/bin/env bash
# dev/capacity-cluster.sh — what a Redis Cluster costs chatlog per message, beside one Redis server in
# the same run (docs/CAPACITY.md, section 8). Prints one JSON document and writes it to
# benches/results/capacity-cluster.json (CAPACITY_OUT moves it).
#
#   dev/capacity-cluster.sh    # a few minutes on 2 cores; needs both stacks (dev/stack.sh up,
#                              # dev/cluster.sh up) and release builds of chatlog and chatlog-consumer
#
# Why side by side: on one server the seq fast path serves many sessions per script call and runs a
# script pinned to the server's run_id; on a Cluster each call holds one slot's sessions and reads
# both epoch ids (ARCHITECTURE.md, "Redis Cluster"). The same load — CAPACITY_MESSAGES (100 000)
# messages over CAPACITY_SESSIONS (1 000) sessions through `chatlog load`, then one release consumer
# draining them — runs once against the single Redis of dev/stack.sh and once against the Cluster
# of dev/cluster.sh; Kafka and CQL are dev/stack.sh's both times, so only Redis differs. Redis CPU
# is read from /proc (every master of the Cluster) around the load and around the drain (from its
# first commit to its last). Topics, keyspaces and keys are named capc_* and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(dev/stack.sh env)"
eval "$(dev/cluster.sh env)"

N=${CAPACITY_MESSAGES:-100000}
SESSIONS=${CAPACITY_SESSIONS:-1000}
SIZE=${CAPACITY_CONTENT_BYTES:-160}
OUT=${CAPACITY_OUT:-benches/results/capacity-cluster.json}
STACK_DIR=${CHATLOG_STACK_DIR:-$HOME/.cache/chatlog/stack}
CONSUMER_BIN=${CAPACITY_CONSUMER_BIN:-target/release/chatlog-consumer}
CHATLOG_BIN=${CAPACITY_CHATLOG_BIN:-target/release/chatlog}
REDIS_PORT=${CHATLOG_REDIS_PORT:-6390}
IFS=, read -r -a CLUSTER_NODES <<<"$CHATLOG_CLUSTER_REDIS_NODES"
FIRST_CLUSTER_PORT=$(sed -E 's#.*:([0-9]+)/?$#\1#' <<<"${CLUSTER_NODES[0]}")
WORK=$(mktemp -d /tmp/capacity-cluster.XXXXXX)
PIDS=()

log() { printf 'capacity-cluster: %s\n' "$*" >&2; }
# consumer_http_addr, consumer_persisted
# shellcheck source=dev/consumer-probe.sh
source dev/consumer-probe.sh
kafka_tool() { java -cp "$CHATLOG_KAFKA_LIB/*" "$@" 2>/dev/null; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
# The pids of the Redis that serves chatlog's keys: the server, or every master of the Cluster.
redis_pids() {
  if [ "$1" = single ]; then
    cat "$STACK_DIR/run/redis.pid"
    return
  fi
  local port
  for port in $(redis-cli -p "$FIRST_CLUSTER_PORT" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF > 8 {split($2, a, "[:@]"); print a[2]}'); do
    redis-cli -p "$port" info server | awk -F: '/^process_id:/{print $2+0}'
  done
}
redis_args() { # the flags that point a binary at the mode's Redis
  if [ "$1" = single ]; then
    echo "--redis-url redis://127.0.0.1:$REDIS_PORT/"
  else
    echo "--redis-cluster-nodes $CHATLOG_CLUSTER_REDIS_NODES"
  fi
}
unlink_keys() { # unlink_keys MODE: every capc_ key of that Redis (one UNLINK per key: slots differ)
  local port ports
  if [ "$1" = single ]; then ports=$REDIS_PORT; else
    ports=$(redis-cli -p "$FIRST_CLUSTER_PORT" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2, a, "[:@]"); print a[2]}')
  fi
  for port in $ports; do
    redis-cli -p "$port" --scan --pattern "chatlog:{capc_$1*" | sed 's/^/UNLINK /' | redis-cli -p "$port" >/dev/null
  done
}
remove_data() { # the topics and keys of a run (keyspaces are dropped as each run ends)
  local mode
  for mode in single cluster; do
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
      --delete --if-exists --topic "capc_$mode" >/dev/null || true
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
      --delete --if-exists --topic "capc_$mode.dlq" >/dev/null || true
    unlink_keys "$mode" || true
  done
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  remove_data
  rm -rf "$WORK"
}
trap cleanup EXIT

for bin in "$CONSUMER_BIN" "$CHATLOG_BIN"; do
  [ -x "$bin" ] || { log "building the release binaries"; cargo build --release -q -p chatlog-consumer -p chatlog-admin; }
done
log "cleaning up any earlier run"
remove_data

measure() { # measure MODE: load then drain against that Redis; prints one JSON object
  local mode=$1 topic="capc_$1" ks="capc_$1_$$" pids r0 r1 t0 t1 logf pid addr cur first=0 i
  read -r -a pids < <(redis_pids "$mode" | tr '\n' ' ')
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
    --create --topic "$topic" --partitions 8 --replication-factor 1 >/dev/null
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
    --create --topic "$topic.dlq" --partitions 1 --replication-factor 1 >/dev/null
  # shellcheck disable=SC2046
  "$CONSUMER_BIN" --keyspace "$ks" --topic "$topic" --dlq-topic "$topic.dlq" migrate >/dev/null 2>"$WORK/migrate-$mode.log"

  log "$mode: sending $N messages over $SESSIONS sessions"
  r0=$(sum_ticks "${pids[@]}"); t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  "$CHATLOG_BIN" load --messages "$N" --sessions "$SESSIONS" --size "$SIZE" --concurrency 256 \
    --topic "$topic" --dlq-topic "$topic.dlq" --keyspace "$ks" $(redis_args "$mode") \
    --session-prefix "capc_$mode" --quiet --json >"$WORK/load-$mode.json" 2>"$WORK/load-$mode.log"
  r1=$(sum_ticks "${pids[@]}"); t1=$(date +%s.%N)
  local load_ticks=$((r1 - r0)) load_secs
  load_secs=$(python3 -c "print(round($t1 - $t0, 3))")

  log "$mode: draining them with one consumer"
  logf="$WORK/consumer-$mode.log"
  # shellcheck disable=SC2046
  "$CONSUMER_BIN" --keyspace "$ks" --topic "$topic" --dlq-topic "$topic.dlq" --group-id "capc-$mode-$$" \
    --transactional-id "capc-$mode-$$" $(redis_args "$mode") --http-listen 127.0.0.1:0 run 2>"$logf" &
  pid=$!
  PIDS+=("$pid")
  addr=$(consumer_http_addr "$pid" "$logf")
  for i in $(seq 1 12000); do
    cur=$(consumer_persisted "$addr")
    if [ "$first" = 0 ] && [ "$cur" -gt 0 ]; then
      first=$cur; r0=$(sum_ticks "${pids[@]}"); t0=$(date +%s.%N)
    fi
    [ "$cur" -ge "$N" ] && break
    sleep 0.05
  done
  r1=$(sum_ticks "${pids[@]}"); t1=$(date +%s.%N)
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$mode" "$N" "${#pids[@]}" "$load_ticks" "$load_secs" "$first" "$cur" "$((r1 - r0))" "$t0" "$t1" "$WORK/load-$mode.json" <<'EOF'
import json, os, sys
mode, n, masters, load_ticks, load_secs, first, last, drain_ticks, t0, t1, load_json = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
n, first, last = int(n), int(first), int(last)
drained = last - first
load = json.load(open(load_json))
print(json.dumps({
    "redis": mode, "redis_processes": int(masters), "messages": n,
    "load": {"seconds": float(load_secs), "acknowledged": load.get("acknowledged", load.get("sent")),
             "redis_cpu_us_per_msg": round(int(load_ticks) / hz * 1e6 / n, 2)},
    "drain": {"records_in_cpu_window": drained, "seconds": round(float(t1) - float(t0), 3),
              "rate_msgs_per_s": round(drained / (float(t1) - float(t0))) if drained else None,
              "redis_cpu_us_per_msg": round(int(drain_ticks) / hz * 1e6 / drained, 2) if drained else None},
}))
EOF
  cql_drop "$ks" >&2
}
cql_drop() { # cql_drop KEYSPACE, with dev/capacity.sh's Python driver when it is installed
  local py=$HOME/.cache/chatlog/capacity-venv/bin/python
  [ -x "$py" ] || { log "keyspace $1 left behind (no CQL client: run dev/capacity.sh once)"; return 0; }
  "$py" - "$1" <<'EOF' || log "could not drop keyspace $1"
import os, sys
from cassandra.cluster import Cluster
from cassandra.auth import PlainTextAuthProvider
host, port = os.environ["CHATLOG_CQL_NODES"].split(",")[0].rsplit(":", 1)
auth = PlainTextAuthProvider(os.environ.get("CHATLOG_CQL_USERNAME", ""), os.environ.get("CHATLOG_CQL_PASSWORD", ""))
Cluster([host], port=int(port), auth_provider=auth).connect().execute(f"DROP KEYSPACE IF EXISTS {sys.argv[1]}", timeout=120)
EOF
}

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
single=$(measure single)
cluster=$(measure cluster)
mkdir -p "$(dirname "$OUT")"
python3 - "$single" "$cluster" "$LOAD_AT_START" <<'EOF' | tee "$OUT"
import json, sys
single, cluster = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = lambda part: round(cluster[part]["redis_cpu_us_per_msg"] / single[part]["redis_cpu_us_per_msg"], 2)
print(json.dumps({
    "what": "Redis CPU per message, one server vs a Redis Cluster of 3 masters, same load and run",
    "load_average_at_start": sys.argv[3],
    "single": single, "cluster": cluster,
    "cluster_over_single": {"load": ratio("load"), "drain": ratio("drain")},
}, indent=2))
EOF
