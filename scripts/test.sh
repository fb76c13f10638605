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
mkdir -p "${CARGO_TARGET_DIR:-target}"
bash scripts/prune-target.sh

# The PostgreSQL store's tests share one private server for the whole run
# (started below; measurelab_testbed::pg gives each test its own database).
pg_dir=$(mktemp -d -t mlab-pg-test.XXXXXX)
# Each phase's wall-clock time, printed at the end (also after a failure), so
# a run shows where its minutes went (the budget is 45 of CI's 90).
phase_name="setup (packages, services)"
phase_started=0
phase_times=()
# The free disk space after each phase, too: a full disk shows up as a
# linker's bus error, far from its cause.
end_phase() {
  local free
  free=$(df -BG --output=avail "${CARGO_TARGET_DIR:-target}" 2>/dev/null | tail -n 1 | tr -d ' ')
  phase_times+=("$(printf '%5d s  %5s free  %s' $((SECONDS - phase_started)) "$free" "$phase_name")")
}
phase() {
  end_phase
  phase_name=$1
  phase_started=$SECONDS
  echo "== $1"
}
cleanup() {
  local status=$?
  end_phase
  echo "== phase times (total ${SECONDS} s, exit ${status})"
  printf '%s\n' "${phase_times[@]}"
  MEASURELAB_PG_DIR=$pg_dir bash scripts/pg.sh stop >/dev/null 2>&1 || true
  bash scripts/sweep.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT

phase "fmt"
cargo fmt --all -- --check
phase "clippy"
cargo clippy --workspace --all-targets -- -D warnings
phase "build"
cargo build --workspace --bins
phase "provider docs match the schema"
cargo run -q -p xtask -- docs --check
phase "no two modules import each other, and the result schema matches its type"
cargo run -q -p xtask -- modcycles
cargo run -q -p xtask -- result-schema --check
phase "OpenAPI document matches the types and passes a standard validator"
cargo run -q -p xtask -- openapi --check
python3 -m openapi_spec_validator controller/openapi.json
phase "wire contract: node.proto and the OpenAPI document against the last release"
cargo run -q -p xtask -- compat
phase "terraform test (modules/multicast-measurement, mocked provider)"
# mock_provider still loads the provider's schema, so init needs the binary
# just built; a copy of the module keeps .terraform and the lock file out of
# the tree.
module_test_dir=$(mktemp -d)
cp -r modules/multicast-measurement "$module_test_dir/module"
module_tfrc=$("${CARGO_TARGET_DIR:-target}/debug/measurelab" lab tfrc --dir "$module_test_dir/lab")
(
  cd "$module_test_dir/module"
  export TF_CLI_CONFIG_FILE="$module_tfrc"
  terraform init -input=false -no-color >/dev/null
  terraform test -no-color
)
rm -rf "$module_test_dir"
phase "Debian packages: install into a clean root, start the services from their units"
bash scripts/test-packages.sh
phase "tests (unit, integration, real networking, a private PostgreSQL)"
MEASURELAB_TEST_PG_URL=$(MEASURELAB_PG_DIR=$pg_dir bash scripts/pg.sh start)
export MEASURELAB_TEST_PG_URL
# nextest: one process per test, a per-test time limit, and one retry only
# for the QEMU/TCG boot tests (settings in .config/nextest.toml); doctests
# run separately since nextest does not run them.
cargo nextest run --workspace
cargo test --workspace --doc
phase "the controller's tests again, its tables on PostgreSQL (--store postgres://)"
# --workspace with a filter, not -p: the same features as the run above, so
# the test binaries are reused instead of built again.
MEASURELAB_TEST_STORE=postgres cargo nextest run --workspace -E 'package(measurelab-controller)'
phase "the last release's agent and guest agent, for the mixed-version tests"
# Built from the commit in compat/released/RELEASE (git history, so CI's
# clone must not be shallow) into target/released/<commit>; timed here, on
# its own, rather than inside a test's time limit.
cargo run -q -p measurelab-acceptance --bin release-binaries
phase "acceptance (terraform CLI against a real lab)"
TF_ACC=1 cargo nextest run -p measurelab-acceptance
phase "fuzz smoke (every target from its seed corpus; FUZZ_SECONDS each)"
bash scripts/fuzz.sh
