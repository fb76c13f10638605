#!/bin/sh
# A stand-in for a measurement: it writes a capture-sized binary file and a
# small text summary of it where the deployment declares its outputs.
set -e
out=/tmp/measurelab-outputs-demo
mkdir -p "$out"
head -c 2000000 /dev/urandom > "$out/capture.bin"
printf 'bytes=%s\nsha256=%s\n' "$(wc -c < "$out/capture.bin")" \
  "$(sha256sum "$out/capture.bin" | cut -d' ' -f1)" > "$out/summary.txt"
