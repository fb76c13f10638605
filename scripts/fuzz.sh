#!/usr/bin/env bash
# Smoke-runs every fuzz target in fuzz/ for FUZZ_SECONDS each (default 20), starting
# from the committed seed corpus in fuzz/corpus/TARGET. New inputs go to a scratch
# directory, so the committed corpus only changes by hand (copy an interesting input in
# with a name that says what it exercises). A crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the run; reproduce it with
#   cargo +nightly fuzz run --dev -s none TARGET fuzz/artifacts/TARGET/crash-...
#
# Longer campaigns: FUZZ_SECONDS=3600 bash scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-20}
# A dev build: debug assertions (so integer overflow panics) and a fraction of a
# release build's compile time, which is what a smoke run in CI pays for. No
# sanitizer: the targets are safe Rust, and SQLite's C is exercised, not the goal.
build_flags=(--dev -s none)

cargo +nightly fuzz build "${build_flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

for target in "${targets[@]}"; do
    echo "== fuzz $target (${seconds}s)"
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    status=0
    # controller_bodies starts a controller on this data dir; the trap removes it.
    MEASURELAB_FUZZ_DATA_DIR="$scratch/data-$target" \
        cargo +nightly fuzz run "${build_flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
