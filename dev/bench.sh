#!/usr/bin/env bash
# chatlog's benchmarks, side by side with their references, in one run (issues 8, 16 and 17; see BENCHMARKS.md):
#
#   dev/bench.sh            the full run (~8 minutes on 2 cores since issue 18 made P1 10× larger, plus the release build)
#   dev/bench.sh --quick    a smoke run (seconds)
#   dev/bench.sh --only cache   P8 and P9 alone (the cached repositories: users, conversation lists)
#   dev/bench.sh --only mutations   P10 alone (the consumer on edits/recalls/deletes vs appends)
#   dev/bench.sh --only produce   P3 and P3′ alone (the producer, with and without seq allocation,
#                           next to Kafka's Java producer keyed like ours; see BENCHMARKS.md "Method")
#   dev/bench.sh --only pipeline   everything through Kafka: P3, P1, P2, P4, P7 (the consumer's
#                           figures, for A/B runs of consumer changes; ~5 minutes)
#   dev/bench.sh --help     every size and setting (messages, sessions, consumer batch/linger, …)
#
# Brings the local stack up if it is not (dev/stack.sh up is idempotent), builds chatlog-bench and
# chatlog-consumer in release mode, runs P1..P10, prints the table, writes target/bench/results.json
# and draws target/bench/{throughput,latency_cdf,rss}.png (matplotlib; installed from PyPI if missing).
# Extra arguments go to chatlog-bench.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

for a in "$@"; do
  if [ "$a" = "--help" ] || [ "$a" = "-h" ]; then
    cargo run -q --release -p chatlog-bench -- --help
    exit 0
  fi
done

dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
command -v redis-benchmark >/dev/null 2>&1 || { echo "redis-benchmark is missing: apt-get install redis-tools" >&2; exit 1; }
# P3's references run on the JVM: ProducerPerformance and benches/java/KeyedProducerPerf.java (a
# single-file program, which needs a JDK's compiler, not only a JRE).
command -v java >/dev/null 2>&1 || { echo "java is missing: apt-get install openjdk-17-jdk-headless" >&2; exit 1; }

cargo build --release --locked -p chatlog-bench -p chatlog-consumer

out=target/bench
mkdir -p "$out"
target/release/chatlog-bench --consumer-bin target/release/chatlog-consumer --out-dir "$out" "$@"

py="${CHATLOG_PYTHON:-python3}"
# The read-only parts (--only reads, --only cache) record no time series: nothing to draw.
if ! "$py" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["series"] else 1)' "$out/results.json"; then
  echo "[bench] no time series in this run: no plots" >&2
  exit 0
fi
if ! "$py" -c 'import matplotlib' 2>/dev/null; then
  echo "[bench] installing matplotlib for $py from PyPI" >&2
  "$py" -m pip install -q matplotlib >/dev/null 2>&1 \
    || "$py" -m pip install -q --break-system-packages matplotlib >/dev/null \
    || { echo "[bench] could not install matplotlib: no plots (results are in $out/results.json)" >&2; exit 0; }
fi
"$py" benches/plot.py "$out/results.json" "$out"
