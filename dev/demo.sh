#!/usr/bin/env bash
# The main job, end to end: brings the local stack up, builds chatlog in release mode, then runs the
# demo (examples/demo.rs): CQL migrations, topics, a real chatlog-consumer, a load generator sending
# messages through the producer library with a progress bar, and a summary (messages persisted,
# rate, a sample session window, where /metrics is). Extra arguments go to the demo
# (e.g. `dev/demo.sh --messages 100000 --sessions 1000`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
cargo build --release --locked -p chatlog-consumer --bin chatlog-consumer
cargo run --release --locked --example demo -- --consumer-bin target/release/chatlog-consumer \
  --consumer-log "$CHATLOG_STACK_LOGS/demo-consumer.log" "$@"
