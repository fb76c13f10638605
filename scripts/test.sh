#!/usr/bin/env bash
# The whole test suite, on a fresh machine of this kind (Debian, root, Rust,
# no services running). Installs what the tests need, then runs format and
# lint checks, unit + integration tests (real OVS, libvirt, namespaces) and the
# terraform acceptance tests against a real local lab. Every test starts the
# daemons it needs and stops them again; the trap below sweeps up whatever a
# crashed test left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
# A one-shot build gains nothing from incremental caches, and full debug info
# triples the size of the target dir; line tables keep backtraces readable.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
# Backtraces would end up inside terraform diagnostics; tests want them off.
unset RUST_BACKTRACE

SKIP_BUILD=1 bash scripts/setup.sh

cleanup() { bash scripts/sweep.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --bins
echo "== provider docs match the schema"
cargo run -q -p xtask -- docs --check
echo "== tests (unit, integration, real networking)"
# nextest: one process per test, a per-test time limit, and one retry only
# for the QEMU/TCG boot tests (settings in .config/nextest.toml); doctests
# run separately since nextest does not run them.
cargo nextest run --workspace
cargo test --workspace --doc
echo "== acceptance (terraform CLI against a real lab)"
TF_ACC=1 cargo nextest run -p measurelab-acceptance
