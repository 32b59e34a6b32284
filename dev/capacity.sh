#!/usr/bin/env bash
# dev/capacity.sh — the per-message footprint figures of docs/CAPACITY.md, measured on the local
# stack (dev/stack.sh): bytes per message on disk in Cassandra (LZ4 as shipped, and compression off),
# in Kafka's log, and in Redis (window member, per-session keys, idempotency record), plus the CPU
# per message of one consumer drain. Prints one JSON document and writes it to
# benches/results/capacity.json (CAPACITY_OUT moves it).
#
#   dev/capacity.sh            # about a minute on 2 cores (after a release build of chatlog and
#                              # chatlog-consumer, if missing); needs the stack up (dev/stack.sh up)
#
# How: `chatlog load` sends CAPACITY_MESSAGES (200 000) messages of CAPACITY_CONTENT_BYTES (160)
# bytes over CAPACITY_SESSIONS (1 000) sessions through the producer library to a topic of its own
# (8 partitions, as the benchmarks); then the release `chatlog-consumer` drains it twice, into two
# keyspaces (capacity_lz4: the table as migrated; capacity_raw: the same with compression off),
# each with its own group and Redis database. The tables are flushed by a schema change (ALTER
# TABLE … memtable_flush_period_in_ms, which also flushes periodically): this stack has no JMX, so
# no nodetool. The SSTables are read offline with Cassandra's own SSTableMetadataViewer (rows,
# compression ratio); CQL goes through the Python driver, installed from PyPI into
# ~/.cache/chatlog/capacity-venv if missing (Debian's python3-venv first, if missing). Everything
# is named capacity* (topics, keyspaces, groups, Redis keys in databases 5-7) and removed at the
# end (CAPACITY_KEEP=1 keeps it).
# CAPACITY_CHATLOG_BIN / CAPACITY_CONSUMER_BIN choose the binaries (the committed JSON's load ran
# target/debug/chatlog; its send rate sets Kafka's records per batch, reported in the JSON).
#
# The load tool's content is one repeated letter, which LZ4 removes almost entirely: the LZ4
# figures are the cost of everything but the content, the compression-off figures the upper bound.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(dev/stack.sh env)"

N=${CAPACITY_MESSAGES:-200000}
SESSIONS=${CAPACITY_SESSIONS:-1000}
SIZE=${CAPACITY_CONTENT_BYTES:-160}
OUT=${CAPACITY_OUT:-benches/results/capacity.json}
STACK_DIR=${CHATLOG_STACK_DIR:-$HOME/.cache/chatlog/stack}
CASS_LIB=$(ls -d "$HOME"/.cache/chatlog/lib/cassandra-* | head -1)
KAFKA_LIB=$CHATLOG_KAFKA_LIB
CONSUMER_BIN=${CAPACITY_CONSUMER_BIN:-target/release/chatlog-consumer}
CHATLOG_BIN=${CAPACITY_CHATLOG_BIN:-target/release/chatlog}
VENV=$HOME/.cache/chatlog/capacity-venv
TOPIC=capacity.messages
DLQ=capacity.messages.dlq
PREFIX=capacity
DB_PRODUCER=5 DB_LZ4=6 DB_RAW=7
REDIS_PORT=${CHATLOG_REDIS_PORT:-6390}
WORK=$(mktemp -d /tmp/capacity.XXXXXX)
PIDS=()

log() { printf 'capacity: %s\n' "$*" >&2; }
# consumer_http_addr, consumer_persisted
# shellcheck source=dev/consumer-probe.sh
source dev/consumer-probe.sh
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
kafka_tool() { java -cp "$KAFKA_LIB/*" "$@" 2>/dev/null; }

# --- prerequisites -----------------------------------------------------------------------------
if [ ! -x "$CONSUMER_BIN" ] || [ ! -x "$CHATLOG_BIN" ]; then
  log "building the release binaries (chatlog-consumer, chatlog)"
  cargo build --release -q -p chatlog-consumer -p chatlog-admin
fi
if ! "$VENV/bin/python" -c 'import cassandra' 2>/dev/null; then
  # `python3 -m venv` needs Debian's python3-venv (ensurepip), which nothing else installs:
  # dev/stack.sh's apt_install adds it when missing. In a subshell, so that sourcing stack.sh
  # leaves this script's variables and its log() alone.
  (
    # shellcheck source=dev/stack.sh
    source dev/stack.sh
    apt_install python3-venv
  )
  log "installing the Python CQL driver into $VENV"
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q cassandra-driver
fi
cql() { # cql STATEMENT...: run CQL statements against the local node
  "$VENV/bin/python" - "$@" <<'EOF'
import os, sys
from cassandra.cluster import Cluster
from cassandra.auth import PlainTextAuthProvider
host, port = os.environ["CHATLOG_CQL_NODES"].split(",")[0].rsplit(":", 1)
auth = PlainTextAuthProvider(os.environ.get("CHATLOG_CQL_USERNAME", ""), os.environ.get("CHATLOG_CQL_PASSWORD", ""))
s = Cluster([host], port=int(port), auth_provider=auth).connect()
for st in sys.argv[1:]:
    for row in s.execute(st, timeout=120):
        print(*row, sep="\t")
EOF
}
# Cassandra's own JVM options (module exports) are needed by its offline tools.
mapfile -t JVM_OPENS < <(tr '\0' '\n' <"/proc/$(cat "$STACK_DIR/run/cassandra.pid")/cmdline" \
  | awk '/^--add-(exports|opens)$/{print; getline; print}')
sstable_meta() { # sstable_meta DATA.DB: rows and compression ratio
  java "${JVM_OPENS[@]}" -Dcassandra.config="file://$STACK_DIR/conf/cassandra/cassandra.yaml" \
    -cp "$CASS_LIB/*" org.apache.cassandra.tools.SSTableMetadataViewer "$1" 2>/dev/null \
    | awk '/^totalRows:/{r=$2} /^Compression ratio:/{c=$3} /^Compressor:/{z=$2} END{print r+0, (c==""?1:c), (z==""?"none":z)}'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${CAPACITY_KEEP:-0}" != 1 ]; then
    cql "DROP KEYSPACE IF EXISTS capacity_lz4" "DROP KEYSPACE IF EXISTS capacity_raw" >/dev/null 2>&1 || true
    rm -rf "$STACK_DIR/data/cassandra/data/capacity_lz4" "$STACK_DIR/data/cassandra/data/capacity_raw"
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
      --delete --if-exists --topic "$TOPIC" >/dev/null || true
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
      --delete --if-exists --topic "$DLQ" >/dev/null || true
    local db
    for db in $DB_PRODUCER $DB_LZ4 $DB_RAW; do
      rcli -n "$db" --scan --pattern "chatlog:{$PREFIX*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" -n "$db" unlink >/dev/null
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- start from nothing (idempotent) --------------------------------------------------------------
cleanup_first() {
  local saved=${CAPACITY_KEEP:-0}
  CAPACITY_KEEP=0
  cql "DROP KEYSPACE IF EXISTS capacity_lz4" "DROP KEYSPACE IF EXISTS capacity_raw" >/dev/null
  rm -rf "$STACK_DIR/data/cassandra/data/capacity_lz4" "$STACK_DIR/data/cassandra/data/capacity_raw"
  for t in "$TOPIC" "$DLQ"; do
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
      --delete --if-exists --topic "$t" >/dev/null || true
  done
  for db in $DB_PRODUCER $DB_LZ4 $DB_RAW; do
    rcli -n "$db" --scan --pattern "chatlog:{$PREFIX*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" -n "$db" unlink >/dev/null
  done
  CAPACITY_KEEP=$saved
  sleep 2
}
log "cleaning up any earlier run"
cleanup_first
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

log "topics $TOPIC (8 partitions) and $DLQ"
kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
  --create --topic "$TOPIC" --partitions 8 --replication-factor 1 >/dev/null
kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" \
  --create --topic "$DLQ" --partitions 1 --replication-factor 1 >/dev/null

log "keyspaces capacity_lz4 and capacity_raw"
for ks in capacity_lz4 capacity_raw; do
  "$CONSUMER_BIN" --keyspace "$ks" --topic "$TOPIC" --dlq-topic "$DLQ" migrate >/dev/null 2>"$WORK/migrate-$ks.log"
done
cql "ALTER TABLE capacity_raw.messages WITH compression = {'enabled': 'false'}" >/dev/null
COMPRESSION_LZ4=$(cql "SELECT compression FROM system_schema.tables WHERE keyspace_name='capacity_lz4' AND table_name='messages'")
COMPACTION_LZ4=$(cql "SELECT compaction FROM system_schema.tables WHERE keyspace_name='capacity_lz4' AND table_name='messages'")

used_memory() { rcli info memory | awk -F: '/^used_memory:/{print $2+0}'; }
MEM0=$(used_memory)

# --- produce --------------------------------------------------------------------------------------
log "sending $N messages of $SIZE content bytes over $SESSIONS sessions (chatlog load)"
"$CHATLOG_BIN" load --messages "$N" --sessions "$SESSIONS" --size "$SIZE" --concurrency 256 \
  --topic "$TOPIC" --dlq-topic "$DLQ" --keyspace capacity_lz4 \
  --redis-url "redis://127.0.0.1:$REDIS_PORT/$DB_PRODUCER" --session-prefix "$PREFIX" \
  --quiet --json >"$WORK/load.json" 2>"$WORK/load.log"
MEM1=$(used_memory)

# --- drain (twice) --------------------------------------------------------------------------------
drain() { # drain KEYSPACE DB: run a consumer of its own group until it committed N records
  local ks=$1 db=$2 logf="$WORK/consumer-$1.log" pid addr i first_t first c0 cur t0 t1
  "$CONSUMER_BIN" --keyspace "$ks" --topic "$TOPIC" --dlq-topic "$DLQ" --group-id "capacity-$ks" \
    --transactional-id "capacity-$ks-0" --redis-url "redis://127.0.0.1:$REDIS_PORT/$db" \
    --http-listen 127.0.0.1:0 run 2>"$logf" &
  pid=$!
  PIDS+=("$pid")
  addr=$(consumer_http_addr "$pid" "$logf")
  # CPU from the first commit seen to the last one: start-up and the group join are outside.
  first=0
  for i in $(seq 1 6000); do
    cur=$(consumer_persisted "$addr")
    if [ "$first" = 0 ] && [ "$cur" -gt 0 ]; then
      first=$cur
      c0="$(cpu_ticks "$pid") $(cpu_ticks "$(cat "$STACK_DIR/run/cassandra.pid")") $(cpu_ticks "$(cat "$STACK_DIR/run/redis.pid")") $(cpu_ticks "$(cat "$STACK_DIR/run/kafka.pid")")"
      t0=$(date +%s.%N)
      read -r -a busy0 < <(head -1 /proc/stat)
    fi
    [ "$cur" -ge "$N" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  read -r -a busy1 < <(head -1 /proc/stat)
  local c1
  c1="$(cpu_ticks "$pid") $(cpu_ticks "$(cat "$STACK_DIR/run/cassandra.pid")") $(cpu_ticks "$(cat "$STACK_DIR/run/redis.pid")") $(cpu_ticks "$(cat "$STACK_DIR/run/kafka.pid")")"
  local batches
  batches=$(curl -s "http://$addr/metrics" | awk '/^chatlog_consumer_batch_records_count/{print $NF}')
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$ks" "$N" "$first" "$cur" "$t0" "$t1" "$c0" "$c1" "${busy0[*]}" "${busy1[*]}" "${batches:-0}" <<'EOF' >"$WORK/drain-$ks.json"
import json, os, sys
ks, n, first, last, t0, t1, c0, c1, b0, b1, batches = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
msgs = int(last) - int(first)
c0 = [int(x) for x in c0.split()]; c1 = [int(x) for x in c1.split()]
names = ["consumer", "cassandra", "redis", "kafka"]
us = {k: round((b - a) / hz * 1e6 / msgs, 2) for k, a, b in zip(names, c0, c1)} if msgs > 0 else {}
b0 = [int(x) for x in b0.split()[1:]]; b1 = [int(x) for x in b1.split()[1:]]
d = [y - x for x, y in zip(b0, b1)]
idle = d[3] + d[4]
print(json.dumps({
    "keyspace": ks, "records_committed": int(last), "records_in_cpu_window": msgs,
    "seconds": round(float(t1) - float(t0), 3),
    "rate_msgs_per_s": round(msgs / (float(t1) - float(t0))) if msgs > 0 else None,
    "cpu_us_per_msg": us, "machine_busy": round(1 - idle / sum(d), 3) if sum(d) else None,
    "batches": int(float(batches)),
}))
EOF
}
log "draining into capacity_lz4 (Redis db $DB_LZ4)"
drain capacity_lz4 "$DB_LZ4"
MEM2=$(used_memory)
log "draining into capacity_raw (compression off; Redis db $DB_RAW)"
drain capacity_raw "$DB_RAW"

# --- Redis: MEMORY USAGE of each kind of key -------------------------------------------------------
log "Redis: memory per key"
redis_sizes() { # redis_sizes DB PATTERN LIMIT: "count mean_bytes mean_members" over up to LIMIT keys
  local db=$1 pattern=$2 limit=$3
  rcli -n "$db" --scan --pattern "$pattern" | awk -v l="$limit" 'NR<=l' >"$WORK/keys"
  [ -s "$WORK/keys" ] || { echo "0 0 0"; return; }
  awk '{print "MEMORY USAGE \"" $0 "\" SAMPLES 0"}' "$WORK/keys" | rcli -n "$db" >"$WORK/mem"
  awk '{print "TYPE \"" $0 "\""}' "$WORK/keys" | rcli -n "$db" >"$WORK/type"
  paste "$WORK/keys" "$WORK/type" | awk -F'\t' '{ if ($2=="zset") print "ZCARD \"" $1 "\""; else if ($2=="hash") print "HLEN \"" $1 "\""; else print "STRLEN \"" $1 "\"" }' \
    | rcli -n "$db" >"$WORK/card"
  paste "$WORK/mem" "$WORK/card" | awk '{m+=$1; c+=$2; n++} END{printf "%d %.1f %.2f\n", n, m/n, c/n}'
}
read -r WIN_N WIN_BYTES WIN_MEMBERS < <(redis_sizes $DB_LZ4 "chatlog:{$PREFIX*}:win" 1000)
read -r WEP_N WEP_BYTES _ < <(redis_sizes $DB_LZ4 "chatlog:{$PREFIX*}:wep" 1000)
read -r LAT_N LAT_BYTES LAT_FIELDS < <(redis_sizes $DB_LZ4 "chatlog:{$PREFIX*}:latest" 1000)
read -r SEQ_N SEQ_BYTES SEQ_FIELDS < <(redis_sizes $DB_PRODUCER "chatlog:{$PREFIX*}:seq" 1000)
read -r CMID_N CMID_BYTES CMID_VALUE < <(redis_sizes $DB_PRODUCER "chatlog:{$PREFIX*}:cmid:*" 5000)
CMID_TOTAL=$(rcli -n $DB_PRODUCER --scan --pattern "chatlog:{$PREFIX*}:cmid:*" | wc -l)
CMID_KEYLEN=$(rcli -n $DB_PRODUCER --scan --pattern "chatlog:{$PREFIX*}:cmid:*" | awk 'NR<=1000' | awk '{s+=length($0)} END{printf "%.1f", s/NR}')
CMID_TTL=$(rcli -n $DB_PRODUCER pttl "$(rcli -n $DB_PRODUCER --scan --pattern "chatlog:{$PREFIX*}:cmid:*" | awk 'NR==1')")
WIN_ENCODING=$(rcli -n $DB_LZ4 object encoding "$(rcli -n $DB_LZ4 --scan --pattern "chatlog:{$PREFIX*}:win" | awk 'NR==1')")
WIN_MEMBER_LEN=$(rcli -n $DB_LZ4 --scan --pattern "chatlog:{$PREFIX*}:win" | awk 'NR<=20' \
  | while read -r k; do
      rcli -n $DB_LZ4 eval "local s = 0 for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do s = s + #m end return {s, redis.call('ZCARD', KEYS[1])}" 1 "$k" | paste - -
    done | awk '{b+=$1; n+=$2} END{printf "%.1f", b/n}')

# --- Kafka: log bytes per record ------------------------------------------------------------------
log "Kafka: log bytes per record"
KLOG_BYTES=$(find "$STACK_DIR/data/kafka" -path "*/$TOPIC-*" -name '*.log' -printf '%s\n' | awk '{s+=$1} END{print s+0}')
KRECORDS=$(kafka_tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$CHATLOG_KAFKA_BOOTSTRAP" --topic "$TOPIC" \
  | awk -F: '{s+=$3} END{print s+0}')
kafka_tool kafka.tools.DumpLogSegments --deep-iteration \
  --files "$STACK_DIR/data/kafka/$TOPIC-0/00000000000000000000.log" >"$WORK/dump" || true
read -r KBATCHES KBATCH_RECORDS KKEY KVALUE KCODEC < <(awk '
  /^baseOffset:/ { for (i=1;i<=NF;i++) { if ($i=="count:") c+=$(i+1); if ($i=="compresscodec:") z=$(i+1) } b++ }
  /^\| offset:/ { for (i=1;i<=NF;i++) { if ($i=="keySize:") k+=$(i+1); if ($i=="valueSize:") v+=$(i+1) } r++ }
  END { printf "%d %.1f %.1f %.1f %s\n", b, c/b, k/r, v/r, z }' "$WORK/dump")

# --- Cassandra: flush, then the SSTables ----------------------------------------------------------
log "Cassandra: flushing the two tables (a schema change flushes; memtable_flush_period_in_ms too) and reading their SSTables"
cql "ALTER TABLE capacity_lz4.messages WITH memtable_flush_period_in_ms = 2000" \
    "ALTER TABLE capacity_raw.messages WITH memtable_flush_period_in_ms = 2000" >/dev/null
table_stats() { # table_stats KEYSPACE: "rows data_bytes all_component_bytes sstables ratio compressor"
  local dir rows=0 f r c z data all n=0 ratio=1 comp=none
  dir="$STACK_DIR/data/cassandra/data/$1/messages-$(cql "SELECT id FROM system_schema.tables WHERE keyspace_name='$1' AND table_name='messages'" | tr -d -)"
  for f in "$dir"/*-Data.db; do
    [ -e "$f" ] || continue
    read -r r c z < <(sstable_meta "$f")
    rows=$((rows + r)); ratio=$c; comp=$z; n=$((n + 1))
  done
  data=$(find "$dir" -maxdepth 1 -name '*-Data.db' -printf '%s\n' | awk '{s+=$1} END{print s+0}')
  all=$(find "$dir" -maxdepth 1 -type f -printf '%s\n' | awk '{s+=$1} END{print s+0}')
  echo "$rows $data $all $n $ratio $comp"
}
for i in $(seq 1 60); do
  sleep 3
  read -r L_ROWS L_DATA L_ALL L_N L_RATIO L_COMP < <(table_stats capacity_lz4)
  read -r R_ROWS R_DATA R_ALL R_N R_RATIO R_COMP < <(table_stats capacity_raw)
  [ "$L_ROWS" -ge "$N" ] && [ "$R_ROWS" -ge "$N" ] && break
done
KS_LZ4_ALL=$(find "$STACK_DIR/data/cassandra/data/capacity_lz4" -type f -printf '%s\n' | awk '{s+=$1} END{print s+0}')

# --- the JSON -------------------------------------------------------------------------------------
python3 - <<EOF | tee "$OUT"
import json
n = $N
def per(x, d):
    return round(x / d, 1) if d else None
doc = {
  "what": "bytes per message on disk and in Redis, and CPU per message of a consumer drain, measured by dev/capacity.sh",
  "machine": {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip(),
              "cpus": $(nproc), "loadavg_at_start": "$LOAD_AT_START",
              "note": "shared: other engineers' stacks, builds and tests ran on the same 2 cores"},
  "plan": {"messages": n, "sessions": $SESSIONS, "content_bytes": $SIZE, "content": "one repeated letter (chatlog load)",
           "partitions": 8, "window_size": ${CHATLOG_WINDOW_SIZE:-200}, "load": json.load(open("$WORK/load.json"))},
  "kafka": {
    "log_bytes": $KLOG_BYTES, "records": $KRECORDS,
    "log_bytes_per_record": per($KLOG_BYTES, $KRECORDS),
    "partition0_batches": $KBATCHES, "partition0_records_per_batch": $KBATCH_RECORDS,
    "key_bytes_mean": $KKEY, "value_bytes_mean": $KVALUE, "compression": "$KCODEC",
    "note": "log segment bytes (the .log files; indexes are preallocated and not counted) over the records; key and value sizes are uncompressed, from DumpLogSegments of partition 0",
  },
  "cassandra": {
    "compression_lz4_table": "$COMPRESSION_LZ4", "compaction": "$COMPACTION_LZ4",
    "lz4": {"rows": $L_ROWS, "sstables": $L_N, "data_db_bytes": $L_DATA, "all_component_bytes": $L_ALL,
            "bytes_per_row_data": per($L_DATA, $L_ROWS), "bytes_per_row_all_components": per($L_ALL, $L_ROWS),
            "compression_ratio": float("$L_RATIO"), "compressor": "$L_COMP"},
    "uncompressed": {"rows": $R_ROWS, "sstables": $R_N, "data_db_bytes": $R_DATA, "all_component_bytes": $R_ALL,
            "bytes_per_row_data": per($R_DATA, $R_ROWS), "bytes_per_row_all_components": per($R_ALL, $R_ROWS),
            "compressor": "$R_COMP"},
    "keyspace_lz4_all_tables_bytes": $KS_LZ4_ALL,
    "note": "RF 1, one node, flushed, not compacted; all_component_bytes = Data + Index + Summary + Filter + Statistics + CompressionInfo + ...; one row per message",
  },
  "redis": {
    "window": {"keys_sampled": $WIN_N, "bytes_per_key": $WIN_BYTES, "members_per_key": $WIN_MEMBERS,
               "bytes_per_member": per($WIN_BYTES, $WIN_MEMBERS), "member_payload_bytes": $WIN_MEMBER_LEN,
               "encoding": "$WIN_ENCODING"},
    "window_epoch": {"keys_sampled": $WEP_N, "bytes_per_key": $WEP_BYTES},
    "latest": {"keys_sampled": $LAT_N, "bytes_per_key": $LAT_BYTES, "fields": $LAT_FIELDS},
    "seq_hash": {"keys_sampled": $SEQ_N, "bytes_per_key": $SEQ_BYTES, "fields": $SEQ_FIELDS},
    "idempotency_record": {"keys": $CMID_TOTAL, "keys_sampled": $CMID_N, "bytes_per_key": $CMID_BYTES,
                           "value_bytes": $CMID_VALUE, "key_bytes": $CMID_KEYLEN, "pttl_ms_at_read": $CMID_TTL},
    "used_memory_delta": {"after_load": $MEM1 - $MEM0, "after_first_drain": $MEM2 - $MEM1,
                          "note": "INFO memory of the whole instance, which other tests shared: a cross-check only"},
    "note": "MEMORY USAGE ... SAMPLES 0 (exact), jemalloc size classes included, fragmentation not",
  },
  "drains": [json.load(open("$WORK/drain-capacity_lz4.json")), json.load(open("$WORK/drain-capacity_raw.json"))],
}
print(json.dumps(doc, indent=2))
EOF
log "written to $OUT"
