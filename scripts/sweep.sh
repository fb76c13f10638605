#!/usr/bin/env bash
# Sweep up after a crashed test run: bring down every lab under the default lab
# root, and on CI (a throwaway machine where everything of this kind is ours)
# also stop the daemons and remove the namespaces that tests start.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/measurelab
[ -x target/release/measurelab ] && bin=target/release/measurelab
if [ -x "$bin" ] && [ -d /var/lib/measurelab/lab ]; then
  for dir in /var/lib/measurelab/lab/*/; do
    [ -d "$dir" ] || continue
    "$bin" lab down --name "$(basename "$dir")" >/dev/null 2>&1 || true
  done
fi
if [ "${CI:-}" = "true" ]; then
  pkill -x ovs-vswitchd; pkill -x ovsdb-server; pkill -x sfacctd; pkill -x nfcapd
  pkill -f 'target/(debug|release)/(measurelab|mcast-)'
  for ns in $(ip netns list | awk '{print $1}'); do ip netns delete "$ns"; done
fi
exit 0
