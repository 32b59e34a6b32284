#!/usr/bin/env bash
# The main job: brings the local stack up and applies the CQL migrations. (The consumer, the load
# generator and the summary join here as they land.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
cargo run --quiet --release --locked --example migrate -p chatlog-store
