#!/usr/bin/env bash
# Every test, against the real local stack: brings the stack up (installing what is missing) and the
# cluster stack (dev/cluster.sh: three Kafka brokers, a Redis Cluster) beside it, checks
# formatting, lints and the dependency policy, runs the whole test suite of the workspace, then the
# chaos harness's CI sizes (`dev/chaos.sh ci`, ~4 minutes, a replay from offset 0 included, and
# `dev/chaos.sh cluster-ci` on the cluster stack, ~4 minutes), which print their summary lines. Extra
# arguments go to `cargo test`; CHATLOG_SKIP_CHAOS=1 skips the chaos step (e.g. a filtered test run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
log_dir="${CHATLOG_STACK_DIR:-${CHATLOG_CACHE_DIR:-$HOME/.cache/chatlog}/stack}/logs"
mkdir -p "$log_dir"
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

# A clean build of every test target needs about 3 GiB (plus the stack's data); a full disk shows up
# later as a linker "Bus error", so say it plainly up front.
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kib="$(df -Pk "$target_dir" | awk 'NR==2 {print $4}')"
if [ "${free_kib:-0}" -lt $((5 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kib / 1024)) MiB free under $target_dir; a clean test build needs ~3 GiB" >&2
fi

# cargo-deny builds from source once; do it while the stack starts.
deny_pid=""
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "installing cargo-deny in the background (log: $log_dir/cargo-deny-install.log)"
  cargo install --locked cargo-deny@0.20.2 >"$log_dir/cargo-deny-install.log" 2>&1 &
  deny_pid=$!
fi

step "local stack"
# Tests leave keyspaces and topics behind. When the services must be started anyway (a fresh session,
# CI), start them on empty data so that never piles up; a running stack is reused as it is.
if ! dev/stack.sh is-up; then
  dev/stack.sh reset
fi
dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"

step "cluster stack (3 Kafka brokers, Redis Cluster: tests/cluster.rs)"
# Same rule as the local stack: a stopped cluster restarts on empty data. A previous session's
# brokers, killed with the machine, leave registrations that a restart waits out, and chaos left
# its topics behind.
if ! dev/cluster.sh is-up; then
  dev/cluster.sh reset
fi
dev/cluster.sh up
# shellcheck disable=SC1090
eval "$(dev/cluster.sh env)"

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency policy (cargo deny)"
if [ -n "$deny_pid" ]; then
  wait "$deny_pid" || { tail -20 "$log_dir/cargo-deny-install.log" >&2; exit 1; }
fi
cargo deny --log-level error check licenses bans sources
# The RustSec database comes from GitHub; where it cannot be fetched, say so instead of passing
# silently or failing for a reason that is not ours.
if advisories="$(cargo deny --log-level error check advisories 2>&1)"; then
  echo "advisories ok"
elif grep -q "failed to fetch advisory database" <<<"$advisories"; then
  echo "advisories NOT CHECKED: the RustSec database cannot be fetched from this network"
else
  echo "$advisories" >&2
  exit 1
fi

step "tests"
cargo test --workspace --all-targets --locked "$@"

# Its own step, after every other test: it restarts Kafka and Redis (flush, rollback, failover) and
# pauses Cassandra of this stack, which no other test may see. `cargo test` has just built both of its
# binaries (the chaos and consumer crates have integration tests), so nothing is built again.
if [ "${CHATLOG_SKIP_CHAOS:-0}" != 1 ]; then
  step "chaos harness, ci size (docs/RELIABILITY.md)"
  CHATLOG_CHAOS_BUILD=0 dev/chaos.sh ci
  # The consumer fleet on the cluster stack (scale 1 -> 3 -> 2, a partition leader's broker and a
  # Redis master killed, a consumer kill -9): ~4 minutes.
  step "chaos harness, cluster-ci size (docs/RELIABILITY.md)"
  CHATLOG_CHAOS_BUILD=0 dev/chaos.sh cluster-ci
fi
