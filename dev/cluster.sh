#!/usr/bin/env bash
# chatlog's cluster stack without Docker, all on 127.0.0.1, beside the single-node one of
# dev/stack.sh (other ports, other data): what issue 19 runs the pipeline on.
#
#   dev/cluster.sh up     [kafka|redis|all]   install what is missing, start, wait until ready
#   dev/cluster.sh down   [kafka|redis|all]   stop (data is kept)
#   dev/cluster.sh status                     what runs, on which port
#   dev/cluster.sh env                        the CHATLOG_CLUSTER_* variables tests and tools read
#   dev/cluster.sh is-up                      exit 0 if all three brokers and six Redis nodes run
#   dev/cluster.sh reset                      down + delete the cluster's data
#   dev/cluster.sh start-node redis N         start Redis node N (1..6) again after it died, with its
#                                             cluster identity (nodes.conf): it rejoins, as a replica
#                                             once its slots have failed over (the chaos harness's
#                                             redis_master_kill); `up kafka` likewise starts only
#                                             the brokers that are not running
#
# - Kafka: three nodes in KRaft combined mode (each a broker and a controller, static voters),
#   replication factor 3 and min.insync.replicas 2 for every topic, the consumer offsets and the
#   transaction state log included (dev/conf/kafka/cluster.properties). 384 MB of heap each.
# - Redis Cluster: three masters and three replicas (`redis-cli --cluster create
#   --cluster-replicas 1`), no persistence, node timeout 5 s.
# - CQL: the single Cassandra node of dev/stack.sh (heap: CHATLOG_CASSANDRA_HEAP, default 3g), not
#   a ring. Memory is not the reason: three nodes of 1.5 GB heap each would fit in this machine's
#   ~23 GB. The limits are its 2 CPU cores, which three nodes' compaction and gossip would take
#   from the brokers, the Redis nodes and the tests, and Cassandra's start-up of 30–60 s per node,
#   which would push CI past its time budget. docker-compose.yml has a single `scylla` service,
#   not a ring either, so replication factor 3 on the database (quorum reads and writes, the LWTs'
#   Paxos over three replicas, a replica down) is exercised nowhere: every keyspace that the tests
#   and the compose deployment create has RF 1.
#
# Idempotent like dev/stack.sh: `up` on a running cluster only checks it. Overridable:
#   CHATLOG_CLUSTER_KAFKA_PORT 19092 (nodes on 19092..19094, controllers on 19192..19194)
#   CHATLOG_CLUSTER_REDIS_PORT 16001 (nodes on 16001..16006; cluster bus ports +10000)
#   All below 32768: ports in the kernel's ephemeral range (32768..60999) may be held by any
#   outgoing connection of the tests, and a bind then fails.
#   CHATLOG_STACK_DIR as dev/stack.sh (the cluster lives in its cluster/ folder)
set -euo pipefail

# The helpers (log, die, apt_install, resolve_jars, pid_alive, port_open, wait_for_line, stop_pid,
# render, need_java) and the stack's folders.
# shellcheck source=dev/stack.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/stack.sh"

CLUSTER_DIR="$STACK_DIR/cluster"
RUN_DIR="$CLUSTER_DIR/run"
LOG_DIR="$CLUSTER_DIR/logs"
CLUSTER_KAFKA_PORT="${CHATLOG_CLUSTER_KAFKA_PORT:-19092}"
CLUSTER_REDIS_PORT="${CHATLOG_CLUSTER_REDIS_PORT:-16001}"
KAFKA_NODES=3
REDIS_NODES=6

kafka_broker_port() { echo $((CLUSTER_KAFKA_PORT + $1 - 1)); }
kafka_controller_port() { echo $((CLUSTER_KAFKA_PORT + 100 + $1 - 1)); }
redis_node_port() { echo $((CLUSTER_REDIS_PORT + $1 - 1)); }

# ---------------------------------------------------------------------------------------------- kafka

cluster_kafka_start() {
  need_java
  local lib i voters="" cluster_id_file="$CLUSTER_DIR/kafka-cluster-id" cluster_id
  lib="$(resolve_jars kafka)"
  for i in $(seq 1 $KAFKA_NODES); do
    voters="${voters:+$voters,}$i@127.0.0.1:$(kafka_controller_port "$i")"
  done
  if [ ! -f "$cluster_id_file" ]; then
    # 16 random bytes, base64url without padding, never starting with '-'.
    printf 'A%s' "$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | cut -c2-22)" >"$cluster_id_file"
  fi
  cluster_id="$(cat "$cluster_id_file")"
  KAFKA_STARTED=()
  for i in $(seq 1 $KAFKA_NODES); do
    local name="kafka-$i" dir="$CLUSTER_DIR/data/kafka-$i" conf="$CLUSTER_DIR/conf/kafka-$i"
    if pid_alive "$name"; then
      log "cluster $name already running on 127.0.0.1:$(kafka_broker_port "$i")"
      continue
    fi
    mkdir -p "$dir" "$conf"
    local NODE_ID="$i" VOTERS="$voters" BROKER_PORT CONTROLLER_PORT
    BROKER_PORT="$(kafka_broker_port "$i")"
    CONTROLLER_PORT="$(kafka_controller_port "$i")"
    render kafka/cluster.properties "$conf/server.properties" NODE_ID VOTERS BROKER_PORT CONTROLLER_PORT dir
    render kafka/log4j2.properties "$conf/log4j2.properties"
    local java_opts=(-Xms384m -Xmx384m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
      "-Dlog4j2.configurationFile=file:$conf/log4j2.properties")
    if [ ! -f "$dir/meta.properties" ]; then
      log "formatting cluster $name storage (cluster $cluster_id)"
      java "${java_opts[@]}" -cp "$lib/*" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$conf/server.properties" -g >"$LOG_DIR/$name-format.log" 2>&1 \
        || { cat "$LOG_DIR/$name-format.log" >&2; die "cluster $name storage format failed"; }
    fi
    port_open "$BROKER_PORT" && die "port $BROKER_PORT is taken; set CHATLOG_CLUSTER_KAFKA_PORT"
    port_open "$CONTROLLER_PORT" && die "port $CONTROLLER_PORT is taken; set CHATLOG_CLUSTER_KAFKA_PORT"
    local logf="$LOG_DIR/$name.log"
    touch "$logf"
    KAFKA_STARTED+=("$i:$(stat -c %s "$logf")")
    log "starting cluster $name on 127.0.0.1:$BROKER_PORT"
    setsid nohup java "${java_opts[@]}" -cp "$lib/*" kafka.Kafka "$conf/server.properties" \
      >>"$logf" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
  done
}

cluster_kafka_wait() {
  local entry
  for entry in "${KAFKA_STARTED[@]}"; do
    local i="${entry%%:*}" from="${entry#*:}"
    wait_for_line "kafka-$i" "$LOG_DIR/kafka-$i.log" "$from" "Kafka Server started" "$KAFKA_START_TIMEOUT"
    log "cluster kafka-$i ready on 127.0.0.1:$(kafka_broker_port "$i")"
  done
}

# ---------------------------------------------------------------------------------------------- redis

redis_cli_node() { local port="$1"; shift; redis-cli -p "$port" "$@"; }

# redis_node_launch I: starts redis-server I (daemonized) on its port, folder and nodes.conf.
redis_node_launch() {
  local i="$1" name="redis-$1" dir="$CLUSTER_DIR/data/redis-$1" port
  port="$(redis_node_port "$i")"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
    --pidfile "$RUN_DIR/$name.pid" --logfile "$LOG_DIR/$name.log" --dir "$dir" \
    || die "redis-server failed; log: $LOG_DIR/$name.log"
}

# One node again after it died (kill -9), the others running: same port, folder and cluster
# identity (nodes.conf), no data (no persistence). It learns from the others' gossip that its
# slots have a newer owner and becomes that node's replica (full sync). Started before its slots
# failed over, it would serve them empty: wait for the failover first.
cluster_redis_start_node() {
  local i="$1" port n
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le $REDIS_NODES ] || die "redis node number 1..$REDIS_NODES expected, got '$i'"
  port="$(redis_node_port "$i")"
  if pid_alive "redis-$i" && [ "$(redis_cli_node "$port" ping 2>/dev/null)" = PONG ]; then
    log "cluster redis-$i already running on 127.0.0.1:$port"
    return 0
  fi
  [ -f "$CLUSTER_DIR/data/redis-$i/nodes.conf" ] || die "redis-$i has no nodes.conf: run \`dev/cluster.sh up redis\`"
  port_open "$port" && die "port $port is taken"
  rm -f "$RUN_DIR/redis-$i.pid"
  redis_node_launch "$i"
  for n in $(seq 1 100); do
    [ "$(redis_cli_node "$port" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  for n in $(seq 1 300); do
    if grep -q '^cluster_state:ok' < <(redis_cli_node "$port" cluster info 2>/dev/null); then
      log "cluster redis-$i back on 127.0.0.1:$port ($(redis_cli_node "$port" role 2>/dev/null | head -1))"
      return 0
    fi
    sleep 0.1
  done
  die "redis-$i on $port never reported cluster_state:ok; log: $LOG_DIR/redis-$i.log"
}

cluster_redis_start() {
  apt_install redis-server redis-tools
  local i port fresh=0
  for i in $(seq 1 $REDIS_NODES); do
    local name="redis-$i" dir="$CLUSTER_DIR/data/redis-$i"
    port="$(redis_node_port "$i")"
    if pid_alive "$name" && [ "$(redis_cli_node "$port" ping 2>/dev/null)" = PONG ]; then
      continue
    fi
    # Without persistence a restarted node is empty: its old identity (nodes.conf) would claim
    # slots it no longer holds. Every node starts afresh and the cluster is created again.
    fresh=1
  done
  if [ "$fresh" = 0 ]; then
    log "redis cluster already running on 127.0.0.1:$CLUSTER_REDIS_PORT..$(redis_node_port $REDIS_NODES)"
    return 0
  fi
  cluster_redis_stop
  local nodes=()
  for i in $(seq 1 $REDIS_NODES); do
    local name="redis-$i" dir="$CLUSTER_DIR/data/redis-$i"
    port="$(redis_node_port "$i")"
    rm -rf "$dir"
    mkdir -p "$dir"
    port_open "$port" && die "port $port is taken; set CHATLOG_CLUSTER_REDIS_PORT"
    port_open $((port + 10000)) && die "cluster bus port $((port + 10000)) is taken; set CHATLOG_CLUSTER_REDIS_PORT"
    redis_node_launch "$i"
    nodes+=("127.0.0.1:$port")
  done
  for i in $(seq 1 $REDIS_NODES); do
    port="$(redis_node_port "$i")"
    local n
    for n in $(seq 1 100); do
      [ "$(redis_cli_node "$port" ping 2>/dev/null)" = PONG ] && break
      sleep 0.1
    done
  done
  log "creating the redis cluster (3 masters, 3 replicas)"
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$LOG_DIR/redis-cluster-create.log" 2>&1 \
    || { cat "$LOG_DIR/redis-cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
  # Ready: every node agrees the cluster is ok (slots assigned, gossip converged).
  for i in $(seq 1 $REDIS_NODES); do
    port="$(redis_node_port "$i")"
    local n ok=0
    for n in $(seq 1 200); do
      if grep -q '^cluster_state:ok' < <(redis_cli_node "$port" cluster info 2>/dev/null); then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" = 1 ] || die "redis node $port never reported cluster_state:ok; log: $LOG_DIR/redis-$i.log"
  done
  log "redis cluster ready on 127.0.0.1:$CLUSTER_REDIS_PORT..$(redis_node_port $REDIS_NODES)"
}

# All three at once, then KILL what is left after 15 s: a broker whose controllers are gone waits
# for a quorum that will not come back (KRaft recovers its log at the next start).
cluster_kafka_stop() {
  local i n pids=()
  for i in $(seq 1 $KAFKA_NODES); do
    if pid_alive "kafka-$i"; then
      pids+=("$(cat "$RUN_DIR/kafka-$i.pid")")
      log "stopping cluster kafka-$i (pid ${pids[-1]})"
    fi
  done
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
  for n in $(seq 1 75); do
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.2
  done
  for i in "${pids[@]}"; do kill -9 "$i" 2>/dev/null || true; done
  for i in $(seq 1 $KAFKA_NODES); do rm -f "$RUN_DIR/kafka-$i.pid"; done
}

cluster_redis_stop() {
  local i
  for i in $(seq 1 $REDIS_NODES); do stop_pid "redis-$i"; done
}

# ----------------------------------------------------------------------------------------------- main

cluster_env() {
  local i kafka="" redis=""
  for i in $(seq 1 $KAFKA_NODES); do kafka="${kafka:+$kafka,}127.0.0.1:$(kafka_broker_port "$i")"; done
  for i in $(seq 1 $REDIS_NODES); do redis="${redis:+$redis,}redis://127.0.0.1:$(redis_node_port "$i")/"; done
  cat <<EOF
export CHATLOG_CLUSTER_KAFKA_BOOTSTRAP=$kafka
export CHATLOG_CLUSTER_REDIS_NODES=$redis
EOF
}

cluster_status() {
  local i
  for i in $(seq 1 $KAFKA_NODES); do
    if pid_alive "kafka-$i"; then echo "kafka-$i: running on 127.0.0.1:$(kafka_broker_port "$i")"; else echo "kafka-$i: stopped"; fi
  done
  for i in $(seq 1 $REDIS_NODES); do
    local port role
    port="$(redis_node_port "$i")"
    if pid_alive "redis-$i"; then
      role="$(redis_cli_node "$port" role 2>/dev/null | head -1)"
      echo "redis-$i: running on 127.0.0.1:$port (${role:-no answer})"
    else
      echo "redis-$i: stopped"
    fi
  done
  echo "logs: $LOG_DIR"
}

cluster_main() {
  local cmd="${1:-}" what="${2:-all}" i
  mkdir -p "$LOG_DIR" "$RUN_DIR" "$CLUSTER_DIR/data" "$CLUSTER_DIR/conf"
  case "$cmd" in
    up)
      case "$what" in
        all) cluster_redis_start; cluster_kafka_start; cluster_kafka_wait ;;
        kafka) cluster_kafka_start; cluster_kafka_wait ;;
        redis) cluster_redis_start ;;
        *) die "unknown part '$what' (kafka|redis|all)" ;;
      esac
      cluster_env >"$CLUSTER_DIR/env"
      ;;
    down)
      case "$what" in
        all) cluster_redis_stop; cluster_kafka_stop ;;
        kafka) cluster_kafka_stop ;;
        redis) cluster_redis_stop ;;
        *) die "unknown part '$what' (kafka|redis|all)" ;;
      esac
      ;;
    status) cluster_status ;;
    is-up)
      for i in $(seq 1 $KAFKA_NODES); do pid_alive "kafka-$i" || exit 1; done
      for i in $(seq 1 $REDIS_NODES); do pid_alive "redis-$i" || exit 1; done
      ;;
    env) cluster_env ;;
    start-node)
      case "$what" in
        redis) cluster_redis_start_node "${3:-}" ;;
        *) die "start-node redis N (kafka: \`dev/cluster.sh up kafka\` starts the brokers that are not running)" ;;
      esac
      ;;
    reset)
      cluster_redis_stop
      cluster_kafka_stop
      rm -rf "$CLUSTER_DIR/data" "$CLUSTER_DIR/conf" "$CLUSTER_DIR/kafka-cluster-id"
      log "cluster data deleted"
      ;;
    *) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || exit 2 ;;
  esac
}

cluster_main "$@"
