#!/usr/bin/env bash
# The one test command (README, `just test` and CI run exactly this).
#
# Builds the `trustmesh` binary once (the end-to-end suites reuse it), then
# runs every test of the workspace with cargo-nextest. The suites talk to the
# real PostgreSQL started by scripts/services.sh; they fail loudly if it is
# missing, they are never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trustmesh-target}"
bash scripts/services.sh

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

echo "==> building the trustmesh binary"
cargo build --locked -p trustmesh --bin trustmesh

echo "==> running the tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
