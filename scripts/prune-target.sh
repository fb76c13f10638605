#!/usr/bin/env bash
# Deletes the executables in the target dir that a later build of the same
# test or binary has replaced, keeping the newest of each name.
#
# Why: cargo never removes a superseded executable. Each change to a crate
# links its test binaries again under a new hash, at 50 to 150 MiB each, so
# a target dir that is reused across commits grows by gigabytes per change;
# one CI run filled its disk that way and the linker died with a bus error.
# An executable deleted here is only ever linked again (from the kept
# libraries) if an older commit is built.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
freed=0
for deps in "$target"/*/deps; do
  [ -d "$deps" ] || continue
  fingerprints=$(dirname "$deps")/.fingerprint
  # Two packages may each have a test of the same name (controller and API
  # both have tests/tls.rs), so an executable's key is its package and its
  # name; the package is in the name of the fingerprint dir with its hash.
  # An executable without a fingerprint dir is left alone.
  mapfile -t superseded < <(
    while read -r mtime file; do
      hash=${file##*-}
      fingerprint=$(compgen -G "$fingerprints/*-$hash" | head -n 1) || continue
      package=$(basename "$fingerprint")
      echo "$mtime ${package%-*}/${file%-*} $file"
    done < <(find "$deps" -maxdepth 1 -type f -executable \
               -regextype posix-extended -regex '.*/[^/]+-[0-9a-f]{16}' -printf '%T@ %f\n') \
      | sort -k2,2 -k1,1nr | awk 'seen[$2]++ { print $3 }')
  # Sorted newest first within a key: every line after a key's first is
  # superseded.
  for file in "${superseded[@]}"; do
    size=$(stat -c %s "$deps/$file")
    rm -f "$deps/$file" "$deps/$file.d"
    freed=$((freed + size))
  done
done
echo "prune-target: freed $((freed / 1048576)) MiB of superseded executables in $target"
