#!/usr/bin/env bash
# The chaos harness (docs/RELIABILITY.md): local stack up, build, one chaos run, the summary line.
#
#   dev/chaos.sh ci   [chatlog-chaos flags…]   108k messages, W = 200, every fault kind at least once
#                                               (5 kill -9, 10 late sends, one of each other kind), ~10 %
#                                               of the messages mutated, then a replay from offset 0 with
#                                               one kill -9 (debug build, ~4 minutes); CI runs it as a
#                                               step of dev/test.sh
#   dev/chaos.sh full [chatlog-chaos flags…]   1,000,000 messages, 20 kill -9, 3 rebalances, 2 rollbacks,
#                                               2 failovers, 2 poll zombies, 2 two-producer periods, 2 wrongtype, 50 late
#                                               sends, one of each other kind, 1 % poison (release build)
#   dev/chaos.sh cluster-ci [flags…]            the cluster stack (dev/cluster.sh: 3 Kafka brokers, RF 3,
#                                               min ISR 2; a Redis Cluster of 3 masters + 3 replicas;
#                                               the single Cassandra of dev/stack.sh): 24k messages,
#                                               fleet scaled 1 → 3 → 2 (distinct transactional and
#                                               group instance ids), kill -9 of a partition leader
#                                               broker (then `dev/cluster.sh up kafka`), kill -9 of a
#                                               Redis master (its replica takes over; the old node
#                                               rejoins as a replica), kill -9 of a consumer, and a
#                                               Cassandra pause, a consumer pause, a two-producer
#                                               period, 3 late sends, a wrongtype session; ~10 %
#                                               mutated; the replay from offset 0 (debug build, ≤ 6 min)
#   dev/chaos.sh cluster    [flags…]            the same on the cluster with 300k messages, 5 kill -9,
#                                               2 broker kills, 2 Redis master kills (release build)
#   The cluster sizes run none of the single-Redis faults (proxy, FLUSHALL, restart, rollback,
#   failover to the harness's replica) nor the single-broker restart. Their lines start with
#   `chaos cluster:` and carry the same counts.
#
# It prints the summary line, and the same counts after the replay from offset 0:
#   chaos: N acked, 0 lost, 0 duplicated, 0 reordered, 0 window mismatches, 0 overwritten, 0 false missing, 0 mutation mismatches (M mutations), K faults injected (kill=…, …)
#   chaos: after a replay from offset 0 (R records, kill=1, T s): 0 lost, 0 duplicated, …, 0 mutation mismatches (M mutations)
# Exit status: 0 when every count of both lines is 0, every message was acknowledged and every planned
# fault injected; 1 when the checker found something; 2 when the run could not be carried out. The
# report (JSON) goes to target/chaos/ (CHATLOG_CHAOS_OUT moves it); events.log and the consumer logs
# to the run folder it names.
# CHATLOG_CHAOS_BUILD=0 skips the cargo build (dev/test.sh: `cargo test` has just built both binaries).
#
# DANGER: the run restarts Kafka, restarts, flushes and rolls back Redis, fails it over to a replica it
# starts on CHATLOG_REDIS_REPLICA_PORT (default: the Redis port + 1) and pauses Cassandra of the stack
# that CHATLOG_STACK_DIR and the CHATLOG_*_PORT variables select (dev/stack.sh's defaults otherwise);
# the cluster sizes kill -9 brokers and Redis masters of the cluster stack there (CHATLOG_CLUSTER_*_PORT).
# Do not run it against a stack other people are testing against; give it its own, e.g.
#   CHATLOG_STACK_DIR=/tmp/chaos-stack CHATLOG_KAFKA_PORT=19092 CHATLOG_KAFKA_CONTROLLER_PORT=19093 CHATLOG_KAFKA_SASL_PORT=19094 CHATLOG_KAFKA_TLS_PORT=19095 \
#   CHATLOG_CQL_PORT=19042 CHATLOG_CASSANDRA_STORAGE_PORT=17000 CHATLOG_REDIS_PORT=16390 dev/chaos.sh ci
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size="${1:-}"
case "$size" in
  ci | cluster-ci) profile=debug; release=() ;;
  full | cluster) profile=release; release=(--release) ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
shift

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 2; }
dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
case "$size" in
  cluster | cluster-ci)
    dev/cluster.sh up
    # shellcheck disable=SC1090
    eval "$(dev/cluster.sh env)"
    ;;
esac
if [ "${CHATLOG_CHAOS_BUILD:-1}" != 0 ]; then
  cargo build "${release[@]}" --locked -p chatlog-consumer -p chatlog-chaos
fi

target="${CARGO_TARGET_DIR:-target}"
for bin in chatlog-chaos chatlog-consumer; do
  [ -x "$target/$profile/$bin" ] || { echo "$target/$profile/$bin is missing (build it, or unset CHATLOG_CHAOS_BUILD)" >&2; exit 2; }
done
out="${CHATLOG_CHAOS_OUT:-$target/chaos}"
mkdir -p "$out"
json="$out/chaos-$size-$(date +%Y%m%d-%H%M%S).json"
started=$(date +%s)
set +e
"$target/$profile/chatlog-chaos" --size "$size" --consumer-bin "$target/$profile/chatlog-consumer" \
  --json "$json" "$@"
status=$?
set -e
echo "chaos: $size size, $(( $(date +%s) - started ))s wall time; report $json" >&2
exit "$status"
