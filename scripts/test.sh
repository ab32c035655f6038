#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, starts PostgreSQL, checks
# formatting and lints, runs every tier (unit, in-process integration with simulators,
# real peers, the QEMU lab) on SQLite and PostgreSQL, then the real client libraries.
#
#   scripts/test.sh            # everything
#   scripts/test.sh --quick    # skip the client-library scenarios (still runs every cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

# Builds are incremental across runs: keep artefacts outside the clone.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ingot-target}
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

step "installing missing system dependencies"
bash scripts/install-deps.sh

step "starting PostgreSQL"
INGOT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh | tail -1)
export INGOT_TEST_POSTGRES_URL
# Every store and API suite must run on PostgreSQL too; never skip it silently.
export INGOT_REQUIRE_POSTGRES=1
# The QEMU lab and the real-peer tests must run, not skip.
export INGOT_REQUIRE_LAB=1

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo tests (all tiers)"
# Two test threads: QEMU VMs under TCG and the peer emulators each want a core.
# --no-fail-fast: one run reports every failing suite, not just the first.
cargo test --workspace --locked --no-fail-fast -- --test-threads=2

if [ $quick = 0 ]; then
    cargo build -p ingot --locked
    export INGOT_BIN="$CARGO_TARGET_DIR/debug/ingot"
    # The real client libraries from PyPI against a real `ingot serve` (each script makes its
    # own venv, server, data dir and keys, and fails loudly).
    for scenario in scripts/test-maas-clients.sh scripts/test-pnap-clients.sh; do
        step "client scenarios: $scenario"
        bash "$scenario"
    done
fi
step "all tests passed"
