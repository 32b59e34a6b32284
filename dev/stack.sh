#!/usr/bin/env bash
# chatlog's local service stack without Docker: Kafka 4 (KRaft, one node), Cassandra 5 (the local CQL
# database; production runs ScyllaDB), Redis, and the Prometheus tools.
#
#   dev/stack.sh up     [kafka|cassandra|redis|all]   install what is missing, start, wait until ready
#   dev/stack.sh down   [kafka|cassandra|redis|all]   stop (data is kept)
#   dev/stack.sh status                               what runs, on which port
#   dev/stack.sh env                                  the CHATLOG_* variables the tests and tools read
#   dev/stack.sh reset                                down + delete all data (jars stay cached)
#   dev/stack.sh is-up                                exit 0 if Kafka, Cassandra and Redis all run
#   dev/stack.sh redis-snapshot FILE                  BGSAVE Redis, move the RDB to FILE
#   dev/stack.sh redis-rollback FILE                  kill -9 Redis, start it again from FILE (an older RDB)
#   dev/stack.sh certs DIR                            a CA and a server certificate for 127.0.0.1 in DIR
#
# Idempotent: `up` on a running service only checks it; `down` then `up` starts again on the same data.
# Readiness is the service's own signal (Kafka's and Cassandra's startup log lines, Redis PING), not an
# open port. Jars come from Maven Central once and are cached, so a warm start takes seconds.
#
# Overridable by environment:
#   CHATLOG_STACK_DIR (default ~/.cache/chatlog/stack) data, logs/ and pid files
#   CHATLOG_CACHE_DIR (default ~/.cache/chatlog)       resolved jar folders
#   CHATLOG_KAFKA_PORT 9092, CHATLOG_KAFKA_CONTROLLER_PORT 9093, CHATLOG_KAFKA_SASL_PORT 9094,
#   CHATLOG_KAFKA_TLS_PORT 9095, CHATLOG_CQL_PORT 9042, CHATLOG_CASSANDRA_STORAGE_PORT 7000,
#   CHATLOG_REDIS_PORT 6390
#   CHATLOG_CASSANDRA_HEAP (default 3g): Cassandra's JVM heap. With 1 GB, old-generation collections
#   of 250-430 ms stopped the database every few minutes under the benchmarks; Cassandra's own
#   default on a 16+ GB machine is larger still.
#
# TLS: the stack makes its own CA and a server certificate for 127.0.0.1 (in $CHATLOG_STACK_DIR/tls,
# kept while valid). Kafka has a TLS listener (CHATLOG_KAFKA_TLS_PORT); Cassandra's CQL port accepts
# TLS and plaintext alike (client_encryption_options optional), both with the same login. `env`
# exports the CA file and the TLS addresses (CHATLOG_STACK_TLS_CA, CHATLOG_STACK_KAFKA_TLS_BOOTSTRAP,
# CHATLOG_STACK_CQL_TLS_NODES).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${CHATLOG_CACHE_DIR:-$HOME/.cache/chatlog}"
STACK_DIR="${CHATLOG_STACK_DIR:-$CACHE_DIR/stack}"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"
DATA_DIR="$STACK_DIR/data"

KAFKA_PORT="${CHATLOG_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${CHATLOG_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_SASL_PORT="${CHATLOG_KAFKA_SASL_PORT:-9094}"
KAFKA_TLS_PORT="${CHATLOG_KAFKA_TLS_PORT:-9095}"
# The stack's own CA and server certificate (see make_certs), shared by Kafka and Cassandra.
TLS_DIR="$STACK_DIR/tls"
# The SASL/PLAIN listener's one user, a local development credential (never a production one).
KAFKA_SASL_USERNAME=chatlog
KAFKA_SASL_PASSWORD=chatlog-local-sasl
CQL_PORT="${CHATLOG_CQL_PORT:-9042}"
CASSANDRA_STORAGE_PORT="${CHATLOG_CASSANDRA_STORAGE_PORT:-7000}"
REDIS_PORT="${CHATLOG_REDIS_PORT:-6390}"

KAFKA_START_TIMEOUT="${CHATLOG_KAFKA_START_TIMEOUT:-180}"
CASSANDRA_START_TIMEOUT="${CHATLOG_CASSANDRA_START_TIMEOUT:-240}"
CASSANDRA_HEAP="${CHATLOG_CASSANDRA_HEAP:-3g}"
# Cassandra's default superuser, a well-known local development credential (never a production one).
CQL_USERNAME=cassandra
CQL_PASSWORD=cassandra

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------- tools

need_java() {
  command -v java >/dev/null 2>&1 || die "Java 17 is required (Kafka 4 and Cassandra 5 run on it): apt-get install openjdk-17-jre-headless"
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
  [ "$v" = "17" ] || die "Java 17 is required, found Java '$v' (Cassandra 5.0 supports 11 and 17 only; Kafka 4 needs 17+). Put a JDK 17 first on PATH or set JAVA_HOME."
}

need_maven() {
  command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the Kafka and Cassandra jars once: apt-get install maven"
}

apt_install() { # apt_install PACKAGE... ; installs only what is missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get is missing; install these Debian packages by hand: ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# resolve_jars NAME -> prints the lib folder; resolves dev/maven/NAME/pom.xml once into the cache.
resolve_jars() {
  local name="$1" pom="$HERE/maven/$1/pom.xml"
  local key
  key="$(sha1sum "$pom" | cut -c1-12)"
  local lib="$CACHE_DIR/lib/$name-$key"
  if [ ! -f "$lib/.complete" ]; then
    need_maven
    log "resolving $name jars from Maven Central (once; cached in $lib)"
    rm -rf "$lib"
    mkdir -p "$lib"
    (cd "$HERE/maven/$name" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$lib" >"$LOG_DIR/mvn-$name.log" 2>&1) \
      || die "maven could not resolve the $name jars; see $LOG_DIR/mvn-$name.log"
    touch "$lib/.complete"
  fi
  printf '%s' "$lib"
}

# ------------------------------------------------------------------------------------------- process

pid_alive() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for_line NAME LOGFILE START_BYTE PATTERN TIMEOUT: waits for PATTERN in the log written after
# START_BYTE, failing fast if the process dies.
wait_for_line() {
  local name="$1" file="$2" from="$3" pattern="$4" timeout="$5" waited=0
  while true; do
    # grep reads from a process substitution, not a pipe: `grep -q` leaves at its first match, and
    # under pipefail the SIGPIPE that then kills a tail still writing a long log fails the test.
    if [ -f "$file" ] && grep -q -- "$pattern" < <(tail -c "+$((from + 1))" "$file"); then
      return 0
    fi
    pid_alive "$name" || { tail -n 40 "$file" >&2 || true; die "$name exited during start-up; log: $file"; }
    [ "$waited" -ge "$((timeout * 5))" ] && { tail -n 40 "$file" >&2 || true; die "$name not ready after ${timeout}s; log: $file"; }
    sleep 0.2
    waited=$((waited + 1))
  done
}

# A running service keeps the configuration it was started with; one started by an older version of
# this script lacks what the tests now rely on until it is restarted.
warn_if_started_without() { # NAME CONFIG_FILE PATTERN WHAT
  grep -q -- "$3" "$2" 2>/dev/null \
    || log "WARNING: this $1 was started without $4 (an older dev/stack.sh); the tests expect it: dev/stack.sh down $1 && dev/stack.sh up"
}

stop_pid() { # stop_pid NAME: TERM, then KILL after 30 s
  local name="$1"
  if pid_alive "$name"; then
    local pid i
    pid="$(cat "$RUN_DIR/$name.pid")"
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in 30 s; killing"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$RUN_DIR/$name.pid"
}

# ------------------------------------------------------------------------------------------------ tls

# make_certs DIR: a CA (ca.pem, ca.key) and a server certificate for 127.0.0.1 and localhost signed
# by it (server.pem, server.key; server-keystore.pem is key + certificate, the PEM keystore Kafka and
# Cassandra read). Kept while the server certificate is valid for another day, so a warm `up` makes
# nothing. The tests that need a CA of their own (tests/security.rs) make it here too.
make_certs() {
  local dir="$1"
  [ -n "$dir" ] || die "usage: dev/stack.sh certs DIR"
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  mkdir -p "$dir"
  if [ -f "$dir/ca.pem" ] && [ -f "$dir/server-keystore.pem" ] \
      && openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    return 0
  fi
  log "making a CA and a server certificate for 127.0.0.1 in $dir"
  (
    cd "$dir"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=chatlog-local-ca" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile ext.cnf -out server.pem
    cat server.key server.pem >server-keystore.pem.tmp
    mv server-keystore.pem.tmp server-keystore.pem
    chmod 644 ca.pem server.pem
  ) >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "openssl could not make the certificates in $dir"; }
}

# Writes the config template dev/conf/$1 to $2 with every ${NAME} of the names that follow replaced by
# that variable's value (the caller's locals included). The templates hold the settings; this script
# only fills in ports and paths.
render() {
  local template="$HERE/conf/$1" out="$2" text name
  shift 2
  [ -f "$template" ] || die "missing config template $template"
  text="$(<"$template")"
  for name in "$@"; do
    text="${text//"\${$name}"/"${!name}"}"
  done
  case "$text" in *'${'[A-Z_a-z]*'}'*) die "$template: a \${...} left unfilled (add its name to the render call)";; esac
  printf '%s\n' "$text" >"$out"
}

# ---------------------------------------------------------------------------------------------- kafka

kafka_start() {
  if pid_alive kafka; then
    log "kafka already running on 127.0.0.1:$KAFKA_PORT"
    warn_if_started_without kafka "$STACK_DIR/conf/kafka/server.properties" SASL_PLAINTEXT "the SASL listener"
    warn_if_started_without kafka "$STACK_DIR/conf/kafka/server.properties" "SSL://" "the TLS listener"
    return 0
  fi
  need_java
  local lib
  lib="$(resolve_jars kafka)"
  local dir="$DATA_DIR/kafka" conf="$STACK_DIR/conf/kafka"
  mkdir -p "$dir" "$conf"
  render kafka/server.properties "$conf/server.properties" \
    KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_SASL_PORT KAFKA_TLS_PORT TLS_DIR KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD dir
  render kafka/log4j2.properties "$conf/log4j2.properties"
  local java_opts=(-Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=file:$conf/log4j2.properties")
  if [ ! -f "$dir/meta.properties" ]; then
    local cluster_id
    # 16 random bytes, base64url without padding, never starting with '-'.
    cluster_id="A$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | cut -c2-22)"
    log "formatting kafka storage (cluster $cluster_id)"
    java "${java_opts[@]}" -cp "$lib/*" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$conf/server.properties" -g >"$LOG_DIR/kafka-format.log" 2>&1 \
      || { cat "$LOG_DIR/kafka-format.log" >&2; die "kafka storage format failed"; }
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set CHATLOG_KAFKA_PORT"
  port_open "$KAFKA_SASL_PORT" && die "port $KAFKA_SASL_PORT is taken by another process; set CHATLOG_KAFKA_SASL_PORT"
  port_open "$KAFKA_TLS_PORT" && die "port $KAFKA_TLS_PORT is taken by another process; set CHATLOG_KAFKA_TLS_PORT"
  local logf="$LOG_DIR/kafka.log"
  touch "$logf"
  KAFKA_FROM="$(stat -c %s "$logf")"
  log "starting kafka on 127.0.0.1:$KAFKA_PORT"
  setsid nohup java "${java_opts[@]}" -cp "$lib/*" kafka.Kafka "$conf/server.properties" \
    >>"$logf" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/kafka.pid"
}

kafka_wait() {
  [ -n "${KAFKA_FROM:-}" ] || return 0
  wait_for_line kafka "$LOG_DIR/kafka.log" "$KAFKA_FROM" "Kafka Server started" "$KAFKA_START_TIMEOUT"
  log "kafka ready on 127.0.0.1:$KAFKA_PORT"
}

# ------------------------------------------------------------------------------------------ cassandra

cassandra_start() {
  if pid_alive cassandra; then
    log "cassandra already running on 127.0.0.1:$CQL_PORT"
    warn_if_started_without cassandra "$STACK_DIR/conf/cassandra/cassandra.yaml" PasswordAuthenticator "logins"
    warn_if_started_without cassandra "$STACK_DIR/conf/cassandra/cassandra.yaml" client_encryption_options "client TLS"
    return 0
  fi
  need_java
  local lib
  lib="$(resolve_jars cassandra)"
  local dir="$DATA_DIR/cassandra" conf="$STACK_DIR/conf/cassandra"
  CASSANDRA_FRESH=0
  [ -d "$dir/data" ] || CASSANDRA_FRESH=1
  mkdir -p "$dir" "$conf"
  render cassandra/cassandra.yaml "$conf/cassandra.yaml" CASSANDRA_STORAGE_PORT CQL_PORT TLS_DIR dir
  render cassandra/logback.xml "$conf/logback.xml"
  port_open "$CQL_PORT" && die "port $CQL_PORT is taken by another process; set CHATLOG_CQL_PORT"
  local jvm17=(
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
  )
  local logf="$LOG_DIR/cassandra.log"
  touch "$logf"
  CASSANDRA_FROM="$(stat -c %s "$logf")"
  log "starting cassandra on 127.0.0.1:$CQL_PORT"
  setsid nohup java "-Xms$CASSANDRA_HEAP" "-Xmx$CASSANDRA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=100 -Xss256k -XX:+ExitOnOutOfMemoryError \
    "${jvm17[@]}" \
    "-javaagent:$lib/jamm-0.4.0.jar" \
    -Djava.net.preferIPv4Stack=true \
    "-Dcassandra.config=file://$conf/cassandra.yaml" \
    -Dcassandra-foreground=yes \
    "-Dcassandra.storagedir=$dir" \
    "-Dcassandra.logdir=$LOG_DIR" \
    "-Dlogback.configurationFile=$conf/logback.xml" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.superuser_setup_delay_ms=0 \
    -Dcassandra.unsafesystem=true \
    -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon \
    >>"$logf" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/cassandra.pid"
}

cassandra_wait() {
  [ -n "${CASSANDRA_FROM:-}" ] || return 0
  wait_for_line cassandra "$LOG_DIR/cassandra.log" "$CASSANDRA_FROM" "Startup complete" "$CASSANDRA_START_TIMEOUT"
  # On fresh data the default superuser is created just after start-up, asynchronously, and logins
  # fail until then; on existing data it exists already (and nothing is logged).
  if [ "${CASSANDRA_FRESH:-0}" = 1 ]; then
    wait_for_line cassandra "$LOG_DIR/cassandra.log" "$CASSANDRA_FROM" "Created default superuser role" 60
  fi
  log "cassandra ready on 127.0.0.1:$CQL_PORT"
}

# ---------------------------------------------------------------------------------------------- redis

# The dev Redis keeps no data across a restart (no automatic saves, no AOF): `down` then `up` is an
# empty Redis. Snapshots are explicit: `redis-snapshot FILE` (BGSAVE, the RDB moved to FILE) and
# `redis-rollback FILE` (kill -9, then a start that loads FILE: Redis back in time, as after a crash
# recovered from an older RDB). The chaos harness uses both.
REDIS_RDB="$DATA_DIR/dump.rdb"

redis_launch() { # start redis-server on $DATA_DIR, loading $REDIS_RDB if present; wait for PONG
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process; set CHATLOG_REDIS_PORT"
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" --dir "$DATA_DIR" --dbfilename dump.rdb \
    || die "redis-server failed; log: $LOG_DIR/redis.log"
  local i
  # While an RDB loads, PING answers LOADING: ready means PONG.
  for i in $(seq 1 300); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && { log "redis ready on 127.0.0.1:$REDIS_PORT"; return 0; }
    sleep 0.1
  done
  die "redis did not answer PING; log: $LOG_DIR/redis.log"
}

redis_start() {
  apt_install redis-server redis-tools
  if pid_alive redis && [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
    # A harness that died in the middle of a failover may have left it a replica; it is the primary.
    if [ "$(redis-cli -p "$REDIS_PORT" role 2>/dev/null | head -1)" = slave ]; then
      log "redis on 127.0.0.1:$REDIS_PORT was a replica; REPLICAOF NO ONE"
      redis-cli -p "$REDIS_PORT" replicaof no one >/dev/null
    fi
    log "redis already running on 127.0.0.1:$REDIS_PORT"; return 0
  fi
  # No persistence: a dump left here can only be a snapshot's leftover, never this Redis's data.
  rm -f "$REDIS_RDB"
  redis_launch
}

redis_snapshot() { # redis_snapshot FILE: BGSAVE, wait until written, move the RDB to FILE
  local file="${1:-}" i
  [ -n "$file" ] || die "usage: dev/stack.sh redis-snapshot FILE"
  pid_alive redis || die "redis is not running"
  redis-cli -p "$REDIS_PORT" bgsave >/dev/null || die "BGSAVE failed"
  local info=""
  for i in $(seq 1 600); do
    info="$(redis-cli -p "$REDIS_PORT" info persistence | tr -d '\r')"
    [[ "$info" == *rdb_bgsave_in_progress:0* ]] && break
    sleep 0.1
  done
  [[ "$info" == *rdb_bgsave_in_progress:0* && "$info" == *rdb_last_bgsave_status:ok* ]] \
    || die "BGSAVE did not finish or failed; log: $LOG_DIR/redis.log"
  [ -f "$REDIS_RDB" ] || die "BGSAVE wrote no $REDIS_RDB"
  mkdir -p "$(dirname "$file")"
  mv "$REDIS_RDB" "$file"
  log "redis snapshot in $file ($(stat -c %s "$file") bytes)"
}

redis_rollback() { # redis_rollback FILE: kill -9 redis, start it from FILE
  local file="${1:-}" pid i
  [ -f "$file" ] || die "usage: dev/stack.sh redis-rollback FILE (an RDB from redis-snapshot)"
  if pid_alive redis; then
    pid="$(cat "$RUN_DIR/redis.pid")"
    log "kill -9 redis (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  rm -f "$RUN_DIR/redis.pid"
  cp "$file" "$REDIS_RDB"
  redis_launch
  rm -f "$REDIS_RDB"
  log "redis restarted from $file"
}

# ------------------------------------------------------------------------------------ the other tools

# The Debian package starts a Prometheus server on :9090 (under systemd), which would block the
# compose deployment's Prometheus; we only need its promtool. Stopped and disabled, every time
# (idempotent; a no-op without systemd, as in containers).
debian_prometheus_off() {
  command -v systemctl >/dev/null 2>&1 || return 0
  [ -d /run/systemd/system ] || return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if systemctl is-enabled --quiet prometheus 2>/dev/null || systemctl is-active --quiet prometheus 2>/dev/null; then
    log "stopping and disabling the Debian prometheus service (it holds :9090; only promtool is used)"
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || log "could not stop the prometheus service"
  fi
}

# The Debian Alertmanager package starts a server on :9093 and :9094 (the local Kafka's controller
# and SASL ports); only its amtool is used (tests/deploy.rs checks the compose Alertmanager config).
# Stopped and disabled, every time, before Kafka starts.
debian_alertmanager_off() {
  command -v systemctl >/dev/null 2>&1 || return 0
  [ -d /run/systemd/system ] || return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if systemctl is-enabled --quiet prometheus-alertmanager 2>/dev/null || systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
    log "stopping and disabling the Debian prometheus-alertmanager service (it holds :9093/:9094; only amtool is used)"
    $sudo systemctl disable --now prometheus-alertmanager >/dev/null 2>&1 || log "could not stop the prometheus-alertmanager service"
  fi
}

tools_install() {
  # promtool (Prometheus), amtool (Alertmanager), docker-compose (validates the compose file
  # without an engine), python3 + fastavro (the independent Avro implementation of the interop
  # test; pip to install it).
  # openjdk-17-jdk-headless: the DLQ replay test runs Kafka's own murmur2 through a single-file
  # Java program (`java File.java` needs the JDK's compiler; the JRE that Kafka needs lacks it).
  apt_install prometheus prometheus-alertmanager docker-compose python3 python3-pip openssl \
    openjdk-17-jdk-headless
  debian_prometheus_off
  debian_alertmanager_off
  local py="${CHATLOG_PYTHON:-python3}"
  if ! "$py" -c 'import fastavro' 2>/dev/null; then
    log "installing fastavro for $py from PyPI"
    "$py" -m pip install -q fastavro >/dev/null 2>&1 \
      || "$py" -m pip install -q --break-system-packages fastavro >/dev/null \
      || die "could not pip install fastavro for $py"
  fi
}

# ----------------------------------------------------------------------------------------------- main

print_env() {
  cat <<EOF
export CHATLOG_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export CHATLOG_STACK_KAFKA_SASL_BOOTSTRAP=127.0.0.1:$KAFKA_SASL_PORT
export CHATLOG_STACK_KAFKA_SASL_USERNAME=$KAFKA_SASL_USERNAME
export CHATLOG_STACK_KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD
export CHATLOG_STACK_KAFKA_TLS_BOOTSTRAP=127.0.0.1:$KAFKA_TLS_PORT
export CHATLOG_STACK_TLS_CA=$TLS_DIR/ca.pem
export CHATLOG_CQL_NODES=127.0.0.1:$CQL_PORT
export CHATLOG_STACK_CQL_TLS_NODES=127.0.0.1:$CQL_PORT
export CHATLOG_CQL_USERNAME=$CQL_USERNAME
export CHATLOG_CQL_PASSWORD=$CQL_PASSWORD
export CHATLOG_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
export CHATLOG_STACK_LOGS=$LOG_DIR
export CHATLOG_KAFKA_LIB=$CACHE_DIR/lib/kafka-$(sha1sum "$HERE/maven/kafka/pom.xml" | cut -c1-12)
EOF
}

status() {
  local s
  for s in kafka cassandra redis; do
    if pid_alive "$s"; then echo "$s: running (pid $(cat "$RUN_DIR/$s.pid"))"; else echo "$s: stopped"; fi
  done
  echo "logs: $LOG_DIR"
}

main() {
  local cmd="${1:-}" what="${2:-all}"
  mkdir -p "$LOG_DIR" "$RUN_DIR" "$DATA_DIR"
  case "$cmd" in
    up)
      case "$what" in
        all)
          tools_install
          redis_start
          make_certs "$TLS_DIR"
          # Kafka and Cassandra start in parallel: launch both, then wait for both.
          kafka_start
          cassandra_start
          kafka_wait
          cassandra_wait
          print_env >"$STACK_DIR/env"
          log "stack ready; variables in $STACK_DIR/env; logs in $LOG_DIR"
          ;;
        kafka) make_certs "$TLS_DIR"; kafka_start; kafka_wait ;;
        cassandra) make_certs "$TLS_DIR"; cassandra_start; cassandra_wait ;;
        redis) redis_start ;;
        tools) tools_install ;;
        *) die "unknown service '$what' (kafka|cassandra|redis|tools|all)" ;;
      esac
      ;;
    down)
      case "$what" in
        all) stop_pid kafka; stop_pid cassandra; stop_pid redis ;;
        kafka|cassandra|redis) stop_pid "$what" ;;
        *) die "unknown service '$what' (kafka|cassandra|redis|all)" ;;
      esac
      ;;
    status) status ;;
    is-up) pid_alive kafka && pid_alive cassandra && pid_alive redis ;;
    env) print_env ;;
    redis-snapshot) redis_snapshot "${2:-}" ;;
    redis-rollback) redis_rollback "${2:-}" ;;
    certs) make_certs "${2:-}" ;;
    reset) stop_pid kafka; stop_pid cassandra; stop_pid redis; rm -rf "$DATA_DIR" "$STACK_DIR/conf"; log "data deleted" ;;
    *) sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || exit 2 ;;
  esac
}

# Sourced (dev/cluster.sh uses the helpers above), it defines them and runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
