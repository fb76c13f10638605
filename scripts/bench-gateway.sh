#!/usr/bin/env bash
# iperf3 through a measurelab-wg (boringtun) tunnel vs iperf3 on the direct
# path between the same two network namespaces (a veth). Prints both
# throughputs and their ratio. Needs root, iperf3, iproute2.
# Usage: scripts/bench-gateway.sh [SECONDS]   (default 10 per run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
# The device in release: debug-built crypto would measure the compiler.
cargo build -q --release -p measurelab-wireguard --bin measurelab-wg
cargo build -q -p measurelab --bin measurelab
wg=$PWD/target/release/measurelab-wg
ml=$PWD/target/debug/measurelab
a=mlbench-a-$$ b=mlbench-b-$$ dir=$(mktemp -d)
cleanup() {
    "$ml" tunnel down --name mlbencha$$ >/dev/null 2>&1 || true
    "$ml" tunnel down --name mlbenchb$$ >/dev/null 2>&1 || true
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip -n "$a" link add eth0 type veth peer name eth0 netns "$b"
ip -n "$a" addr add 192.0.2.1/24 dev eth0; ip -n "$b" addr add 192.0.2.2/24 dev eth0
for ns in "$a" "$b"; do ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up; done

key() { "$ml" tunnel genkey; }
ka=$(key) kb=$(key)
priv() { sed -n 's/^PrivateKey = //p' <<<"$1"; }
pub() { sed -n 's/^# PublicKey = //p' <<<"$1"; }
cat >"$dir/a.conf" <<CONF
[Interface]
PrivateKey = $(priv "$ka")
Address = 10.9.0.1/24
ListenPort = 51820
[Peer]
PublicKey = $(pub "$kb")
AllowedIPs = 10.9.0.2/32
CONF
cat >"$dir/b.conf" <<CONF
[Interface]
PrivateKey = $(priv "$kb")
Address = 10.9.0.2/24
[Peer]
PublicKey = $(pub "$ka")
Endpoint = 192.0.2.1:51820
AllowedIPs = 10.9.0.1/32
CONF
"$ml" tunnel up --config "$dir/a.conf" --netns "$a" --name mlbencha$$ --wireguard-binary "$wg" >/dev/null
"$ml" tunnel up --config "$dir/b.conf" --netns "$b" --name mlbenchb$$ --wireguard-binary "$wg" >/dev/null

# One iperf3 TCP run from b to $1 in a; prints bits/s received.
run() {
    ip netns exec "$a" iperf3 -s -1 -p 5299 >/dev/null &
    local server=$!
    for _ in $(seq 50); do
        ip netns exec "$a" ss -Hltn 'sport = :5299' | grep -q 5299 && break
        sleep 0.1
    done
    ip netns exec "$b" iperf3 -c "$1" -p 5299 -t "$secs" -J \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))'
    wait "$server"
}
direct=$(run 192.0.2.1)
tunnel=$(run 10.9.0.1)
python3 - "$direct" "$tunnel" <<'PY'
import sys
d, t = (int(x) for x in sys.argv[1:])
print(f"direct  {d/1e6:9.1f} Mbit/s")
print(f"tunnel  {t/1e6:9.1f} Mbit/s")
print(f"ratio   {t/d:9.3f}")
PY
