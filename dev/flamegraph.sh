#!/usr/bin/env bash
# Flamegraphs of the figures that miss their goal (issue 18, item 8), from one profiled run of
# dev/bench.sh: when the bench's log says a phase began, `perf record --call-graph dwarf` samples
# the process that does the phase's work for a few seconds:
#
#   p1-consumer     the consumer draining the pre-produced records (P1)
#   p3-library      the bench process sending through the producer library, seq allocation
#                   included, and the Redis server beside it (P3)
#   p3prime         the bench process on the produce path with pre-assigned seqs (P3′)
#   p5-history      the bench process reading history latest(50) with 50 callers, and Redis (P5)
#   p6-allocate     the bench process allocating seqs with 50 callers, and Redis (P6)
#
#   dev/flamegraph.sh [bench arguments]   → target/bench/flamegraphs/<name>.svg (+ .folded)
#
# The figures of a profiled run are perturbed by the sampling (dwarf stacks are copied at every
# sample): read the bench's numbers from an unprofiled dev/bench.sh run, and these graphs for
# where the time goes. The sampling waits (sleep) are pacing into a phase, not synchronisation:
# the bench prints when a phase starts, nothing tells when it is under way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FREQ="${CHATLOG_FLAME_FREQ:-199}"
out=target/bench/flamegraphs
mkdir -p "$out"
log="$out/bench.log"

if ! command -v perf >/dev/null 2>&1; then
  echo "[flame] installing perf (linux-perf)" >&2
  sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if apt-get install -y -q linux-perf >/dev/null
fi
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
  echo "[flame] installing inferno (flamegraph rendering) with cargo" >&2
  cargo install --locked inferno@0.12.8 >/dev/null
fi

dev/stack.sh up >/dev/null
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
redis_pid() {
  redis-cli -u "$CHATLOG_REDIS_URL" info server 2>/dev/null | sed -n 's/^process_id:\([0-9]*\).*/\1/p'
}

dev/bench.sh "$@" >"$log" 2>&1 &
bench_pid=$!
echo "[flame] bench running (log: $log)" >&2

# wait_for PATTERN: until the bench log has PATTERN; fails if the bench ended first, or ended
# while an earlier phase was waited for (with --only, phases that never come are waited for
# until the end: the phase that did run is then over, and nothing is left to sample).
wait_for() {
  while ! grep -qF -- "$1" "$log"; do
    kill -0 "$bench_pid" 2>/dev/null || { echo "[flame] the bench ended before: $1" >&2; return 1; }
    sleep 0.2
  done
  kill -0 "$bench_pid" 2>/dev/null || { echo "[flame] the bench ended after: $1 (not sampled)" >&2; return 1; }
}

# newest_proc NAME: the pid of the newest process called NAME, once there is one. By process
# name, which the kernel cuts to 15 characters (`chatlog-consume` is the consumer; the bench's own
# command line names the consumer's binary, so a match on it would find the bench).
newest_proc() {
  local pid=""
  while [ -z "$pid" ]; do
    pid="$(pgrep -n -x "$1" || true)"
    [ -n "$pid" ] && break
    kill -0 "$bench_pid" 2>/dev/null || { echo "[flame] no $1 process: the bench ended" >&2; return 1; }
    sleep 0.2
  done
  echo "$pid"
}

# profile NAME PATTERN DELAY SECONDS PROCS...: DELAY s after PATTERN, samples PROCS (process
# names, or pids) for SECONDS. The names are looked up after PATTERN: the phase may start them.
profile() {
  local name="$1" pattern="$2" delay="$3" secs="$4" proc pid pids=""
  shift 4
  wait_for "$pattern" || return 0
  sleep "$delay"
  for proc in "$@"; do
    case "$proc" in
      *[!0-9]*) pid="$(newest_proc "$proc")" || return 0; pids="${pids:+$pids,}$pid" ;;
      *) pids="${pids:+$pids,}$proc" ;;
    esac
  done
  echo "[flame] $name: sampling pids $pids for ${secs}s" >&2
  perf record -q -F "$FREQ" --call-graph dwarf,16384 -p "$pids" -o "$out/$name.data" -- sleep "$secs" \
    >/dev/null 2>&1 || echo "[flame] $name: perf record failed" >&2
}

rpid="$(redis_pid)"
# Each waits for its own phase, side by side: with --only, a phase that never comes must not hold
# up the ones that do (the phases themselves never overlap).
samplers=()
profile p5-history "[bench] P5: history latest(50)" 1 4 chatlog-bench "$rpid" & samplers+=($!)
profile p6-allocate "[bench] P6: seq allocations" 1 4 chatlog-bench "$rpid" & samplers+=($!)
profile p3-library "[bench] P3: producer library" 3 8 chatlog-bench "$rpid" & samplers+=($!)
profile p3prime "[bench] P3′: the produce path with pre-assigned seqs" 1 4 chatlog-bench & samplers+=($!)
profile p1-consumer "[bench] P1: chatlog-consumer drains" 0 10 chatlog-consume & samplers+=($!)

wait "$bench_pid" || echo "[flame] the bench failed: $log" >&2
wait "${samplers[@]}" || true
for data in "$out"/*.data; do
  [ -f "$data" ] || continue
  name="$(basename "$data" .data)"
  perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$out/$name.folded"
  inferno-flamegraph --title "$name (dev/flamegraph.sh, perf -F $FREQ, dwarf)" \
    <"$out/$name.folded" >"$out/$name.svg"
  rm -f "$data"
  echo "[flame] $out/$name.svg" >&2
done
