#!/usr/bin/env bash
# The chaos harness (docs/RELIABILITY.md): local stack up, build, one chaos run, the summary line.
#
#   dev/chaos.sh ci   [chatlog-chaos flags…]   50k messages, 5 kill -9 + one of each other fault (debug build)
#   dev/chaos.sh full [chatlog-chaos flags…]   1,000,000 messages, 20 kill -9, 3 rebalances, Kafka restart,
#                                               Redis restart + FLUSHALL, Cassandra SIGSTOP 10 s, 1 % poison
#                                               (release build)
#
# Exit status: 0 when nothing was lost, duplicated or reordered and every window was right; 1 when the
# checker found something; 2 when the run could not be carried out. The report (JSON) goes to
# target/chaos/ (CHATLOG_CHAOS_OUT moves it); events.log and the consumer logs to the run folder it names.
#
# DANGER: the run restarts Kafka, restarts and flushes Redis and pauses Cassandra of the stack that
# CHATLOG_STACK_DIR and the CHATLOG_*_PORT variables select (dev/stack.sh's defaults otherwise). Do not
# run it against a stack other people are testing against; give it its own, e.g.
#   CHATLOG_STACK_DIR=/tmp/chaos-stack CHATLOG_KAFKA_PORT=19092 CHATLOG_KAFKA_CONTROLLER_PORT=19093 CHATLOG_KAFKA_SASL_PORT=19094 \
#   CHATLOG_CQL_PORT=19042 CHATLOG_CASSANDRA_STORAGE_PORT=17000 CHATLOG_REDIS_PORT=16390 dev/chaos.sh ci
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size="${1:-}"
case "$size" in
  ci) profile=debug; release=() ;;
  full) profile=release; release=(--release) ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
shift

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 2; }
dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
cargo build "${release[@]}" --locked -p chatlog-consumer -p chatlog-chaos

target="${CARGO_TARGET_DIR:-target}"
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
