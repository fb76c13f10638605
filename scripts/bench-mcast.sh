#!/usr/bin/env bash
# Benchmark the multicast probe tools against iperf2 on the same userspace OVS path.
# Needs root, openvswitch-switch, iperf (iperf2), nftables. Prints figures only.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p measurelab-mcast --bench mcast_vs_iperf "$@"
