#!/usr/bin/env bash
# The whole test suite against the real local stack: brings the stack up (installing what is missing),
# then runs every test of the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
dev/stack.sh up
# shellcheck disable=SC1090
eval "$(dev/stack.sh env)"
cargo test --workspace --all-targets --locked "$@"
