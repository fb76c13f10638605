#!/usr/bin/env bash
# Sweep up after a crashed test run on CI, a throwaway machine where every lab,
# daemon and namespace of these kinds is ours. On a developer's machine it does
# nothing: tests clean up after themselves, and the user's own labs stay up.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "${CI:-}" = "true" ] || exit 0
bin=target/debug/measurelab
[ -x target/release/measurelab ] && bin=target/release/measurelab
if [ -x "$bin" ] && [ -d /var/lib/measurelab/lab ]; then
  for dir in /var/lib/measurelab/lab/*/; do
    [ -d "$dir" ] || continue
    "$bin" lab down --name "$(basename "$dir")" >/dev/null 2>&1 || true
  done
fi
{
  pkill -x ovs-vswitchd; pkill -x ovsdb-server; pkill -x sfacctd; pkill -x nfcapd
  pkill -f 'target/(debug|release)/(measurelab|mcast-)'
  # PostgreSQL test servers (scripts/pg.sh, measurelab_testbed::pg) of killed tests.
  pkill -f '^/usr/lib/postgresql/[0-9]+/bin/postgres -D /tmp/mlab-pg-'
  for ns in $(ip netns list | awk '{print $1}'); do ip netns delete "$ns"; done
}
exit 0
