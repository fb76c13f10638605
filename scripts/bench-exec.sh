#!/usr/bin/env bash
# vm exec round-trip benchmark (issue 11 §3): `measurelab vm exec VM -- true`
# N times against a namespace VM of a one-node lab, with two peers measured in
# the same run:
#   - api:   the same CLI-less HTTPS round trip to the controller (curl GET of
#            the VM): what any API call costs, without the agent and guest legs;
#   - netns: `nsenter` into the guest's network namespace running `true`
#            directly on the node: the command itself, without the platform.
# Prints median and p95 of each (ms) and the ratios exec/api and exec/netns.
#
#   bash scripts/bench-exec.sh            # N=100
#   N=20 bash scripts/bench-exec.sh
#
# Environment: N (100), BENCH_PROFILE (release; `debug` uses target/debug),
# BENCH_SKIP_BUILD=1, CARGO_TARGET_DIR, BENCH_KEEP=1 (keep logs).
# Needs root (the lab creates namespaces and OVS instances), curl, jq, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

N=${N:-100}
profile=${BENCH_PROFILE:-release}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
bin=$CARGO_TARGET_DIR/$profile
lab=${BENCH_LAB:-bexec}

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    if [[ $profile == release ]]; then
        cargo build --release -p measurelab -p measurelab-guest
    else
        cargo build -p measurelab -p measurelab-guest
    fi
fi
for b in measurelab measurelab-guest-agent; do
    [[ -x $bin/$b ]] || { echo "bench-exec: $bin/$b missing (build first)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/measurelab-bench-exec.XXXXXX)
labdir=$work/lab
ml() { "$bin/measurelab" "$@"; }
cleanup() {
    local rc=$?
    set +e
    ml lab down --name "$lab" --dir "$labdir" >/dev/null 2>&1
    if [[ $rc -ne 0 || ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench-exec: rc=$rc; logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

ml lab up --nodes 1 --name "$lab" --dir "$labdir" --http-port 0 >"$work/lab-up.log" 2>&1 \
    || { cat "$work/lab-up.log" >&2; exit 1; }
# shellcheck disable=SC2046
export $(ml lab env --name "$lab" --dir "$labdir")
cacert=()
[[ -n ${MEASURELAB_CA_CERT:-} ]] && cacert=(--cacert "$MEASURELAB_CA_CERT")
api() {
    curl -fsS "${cacert[@]}" -H "Authorization: Bearer $MEASURELAB_TOKEN" \
        -H 'Content-Type: application/json' "$@"
}

api -X POST "$MEASURELAB_ENDPOINT/v1/platforms" -d '{"name":"bp","nodes":["n1"]}' >/dev/null
api -X POST "$MEASURELAB_ENDPOINT/v1/vms" -d '{"name":"b1","platform":"bp","node":"n1",
    "vcpus":1,"memory_mib":64,"appliance":"namespace","power_state":"running"}' >/dev/null
deadline=$((SECONDS + 180))
until api "$MEASURELAB_ENDPOINT/v1/vms/bp%2Fb1" \
    | jq -e '.actual_state == "running" and any(.conditions[]; .type == "GuestRegistered" and .status == "True")' >/dev/null; do
    (( SECONDS < deadline )) || { echo "bench-exec: VM not ready" >&2; exit 1; }
    sleep 0.2
done
vm_id=$(api "$MEASURELAB_ENDPOINT/v1/vms/bp%2Fb1" | jq -r .id)
netns=vm-$(echo "$vm_id" | tr -d - | cut -c1-8)

# One warm-up of each, then N timed runs, interleaved so load changes hit
# all three alike.
ml vm exec bp/b1 -- true
api "$MEASURELAB_ENDPOINT/v1/vms/bp%2Fb1" >/dev/null
ip netns exec "$netns" true
: >"$work/exec.ms"; : >"$work/api.ms"; : >"$work/netns.ms"
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 ))e-3; }
for _ in $(seq "$N"); do
    ms ml vm exec bp/b1 -- true >>"$work/exec.ms"
    ms api "$MEASURELAB_ENDPOINT/v1/vms/bp%2Fb1" >>"$work/api.ms"
    ms ip netns exec "$netns" true >>"$work/netns.ms"
done

python3 - "$work" "$N" "$profile" <<'EOF'
import statistics, sys
work, n, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(name):
    return sorted(float(x) for x in open(f"{work}/{name}.ms"))
def p95(v):
    return v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
rows = {name: load(name) for name in ("exec", "api", "netns")}
print(f"vm exec round trip (`true`), N={n}, {profile} build, ms")
print(f"{'path':<8} {'median':>8} {'p95':>8} {'min':>8} {'max':>8}")
for name, v in rows.items():
    print(f"{name:<8} {statistics.median(v):8.1f} {p95(v):8.1f} {v[0]:8.1f} {v[-1]:8.1f}")
e, a, l = (statistics.median(rows[k]) for k in ("exec", "api", "netns"))
print(f"ratio exec/api median {e / a:.1f}x, exec/netns median {e / l:.1f}x")
EOF
