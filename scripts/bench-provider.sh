#!/usr/bin/env bash
# Provider benchmark (issue 4): N measurelab_vm namespace guests, spread over
# the lab's nodes, against N terraform_data resources, in the same run.
#
#   bash scripts/bench-provider.sh            # N=200 (or N=... in the environment)
#   bash scripts/bench-provider.sh --quick    # N=20
#
# Environment: N (default 200), BENCH_NODES (3), BENCH_PARALLELISM (terraform's
# -parallelism, default 10 as in terraform), BENCH_SKIP_BUILD=1 (use the
# release binaries already in $CARGO_TARGET_DIR/release), CARGO_TARGET_DIR,
# BENCH_LAB_ARGS (extra `lab up` flags, e.g. "--heartbeat-interval-seconds 1"),
# BENCH_KEEP=1 (keep the logs and time-stamped terraform output).
#
# Prints figures only; it asserts nothing except that every command succeeds
# and that a plan after apply has no changes. Needs root (the lab creates
# network namespaces and OVS instances), terraform, curl, jq, python3.
#
# Where the time goes: terraform's output is time-stamped line by line and the
# controller's VM list is polled four times a second during the apply, so for every
# VM we know when terraform started creating it, when the controller stored it
# (created_at), when it was first seen Ready, and when terraform reported it
# complete. The gaps between these are attributed to provider+controller
# (request), node agent+guest (Ready), and provider wait loop + terraform.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

N=${N:-200}
if [[ ${1:-} == --quick ]]; then N=20; fi
nodes=${BENCH_NODES:-3}
parallelism=${BENCH_PARALLELISM:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
bin=$CARGO_TARGET_DIR/release
lab=${BENCH_LAB:-bench}

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -p measurelab -p measurelab-guest -p terraform-provider-measurelab
fi
for b in measurelab measurelab-guest-agent terraform-provider-measurelab; do
    [[ -x $bin/$b ]] || { echo "bench-provider: $bin/$b missing (build first)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/measurelab-bench.XXXXXX)
labdir=$work/lab
vmdir=$work/vm
datadir=$work/data
mkdir -p "$vmdir" "$datadir"

ml() { "$bin/measurelab" "$@"; }
now() { date +%s.%N; }

cleanup() {
    local rc=$?
    set +e
    if [[ -n ${TF_CLI_CONFIG_FILE:-} ]]; then
        [[ -f $vmdir/terraform.tfstate ]] && terraform -chdir="$vmdir" destroy -auto-approve -no-color -var "n=$N" >"$work/cleanup-vm.log" 2>&1
        [[ -f $datadir/terraform.tfstate ]] && terraform -chdir="$datadir" destroy -auto-approve -no-color -var "n=$N" >"$work/cleanup-data.log" 2>&1
    fi
    ml lab down --name "$lab" --dir "$labdir" >/dev/null 2>&1
    if [[ $rc -ne 0 || ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench-provider: rc=$rc; logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "== lab up: $nodes nodes (name $lab, dir $labdir)" >&2
t0=$(now)
# shellcheck disable=SC2086
ml lab up --nodes "$nodes" --name "$lab" --dir "$labdir" --http-port 0 ${BENCH_LAB_ARGS:-} >"$work/lab-up.log" 2>&1 \
    || { cat "$work/lab-up.log" >&2; exit 1; }
lab_up_s=$(echo "$(now) - $t0" | bc)
# shellcheck disable=SC2046
export $(ml lab env --name "$lab" --dir "$labdir")
TF_CLI_CONFIG_FILE=$(ml lab tfrc --name "$lab" --dir "$labdir" --bin-dir "$bin")
export TF_CLI_CONFIG_FILE TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
api() { curl -fsS -H "Authorization: Bearer $MEASURELAB_TOKEN" "$MEASURELAB_ENDPOINT$1"; }

# The smallest memory the namespace pseudo-appliance accepts.
min_mem=$(api /v1/appliances | jq -r '.appliances[] | select(.name == "namespace") | .min_memory_mib')
[[ $min_mem =~ ^[0-9]+$ ]] || { echo "bench-provider: no namespace appliance in GET /v1/appliances" >&2; exit 1; }

node_list=$(seq -s, -f '"n%g"' 1 "$nodes")

cat >"$vmdir/main.tf" <<EOF
terraform {
  required_providers {
    measurelab = { source = "measurelab.local/measurelab/measurelab" }
  }
}
variable "n" { type = number }
locals { nodes = [$node_list] }

resource "measurelab_virtual_platform" "bench" {
  name  = "bench"
  nodes = local.nodes
}

resource "measurelab_vm" "guest" {
  count      = var.n
  name       = "g\${count.index}"
  platform   = measurelab_virtual_platform.bench.name
  node       = element(local.nodes, count.index)
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = $min_mem
  timeouts {
    create = "30m"
    delete = "30m"
  }
}
EOF

cat >"$datadir/main.tf" <<EOF
variable "n" { type = number }
locals { nodes = [$node_list] }

resource "terraform_data" "guest" {
  count = var.n
  input = { name = "g\${count.index}", node = element(local.nodes, count.index) }
}
EOF

for d in "$vmdir" "$datadir"; do
    terraform -chdir="$d" init -no-color >"$d/init.log" 2>&1 || { cat "$d/init.log" >&2; exit 1; }
done

# Peak VmHWM (kB) of terraform-provider-measurelab children of terraform.
declare -A peak_rss
# Poll the controller's VM list while $1 (a pid) lives; one JSON line per sample.
poll_vms() {
    local pid=$1 out=$2
    while kill -0 "$pid" 2>/dev/null; do
        local t
        t=$(now)
        api "/v1/vms?platform=bench" 2>/dev/null \
            | jq -c --arg t "$t" '{t: ($t | tonumber), vms: [.vms[] | {n: .name, i: .id, c: .created_at,
                  r: ([.conditions[] | select(.type == "Ready" and .status == "True")] | length > 0)}]}' \
            >>"$out" 2>/dev/null || true
        sleep 0.25
    done
}

# timed LABEL DIR terraform-args...: wall time into dur[LABEL]; output time-stamped
# into $work/LABEL.log ($EPOCHREALTIME: forking date per line lags seconds behind
# terraform's plan output at N=200).
declare -A dur rcs
timed() {
    local label=$1 dir=$2
    shift 2
    local start end pid peak=0 tf_peak=0
    start=$(now)
    terraform -chdir="$dir" "$@" -no-color -parallelism="$parallelism" -var "n=${BENCH_VAR_N:-$N}" \
        > >(while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$work/$label.log") 2>&1 &
    pid=$!
    if [[ $label == vm-apply ]]; then poll_vms "$pid" "$work/vm-apply.samples" & fi
    while kill -0 "$pid" 2>/dev/null; do
        local child hwm
        for child in $(pgrep -P "$pid" 2>/dev/null); do
            [[ $(readlink "/proc/$child/exe" 2>/dev/null) == *terraform-provider-measurelab* ]] || continue
            hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)
            ((${hwm:-0} > peak)) && peak=$hwm
        done
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        ((${hwm:-0} > tf_peak)) && tf_peak=$hwm
        sleep 0.1
    done
    local rc=0
    wait "$pid" || rc=$?
    end=$(now)
    wait # the poller and the time-stamper
    dur[$label]=$(echo "$end - $start" | bc)
    rcs[$label]=$rc
    peak_rss[$label]=$peak
    peak_rss[tf-$label]=$tf_peak
    echo "$start" >"$work/$label.start"
    printf '  %-18s %8.2f s  rc=%s\n' "$label" "${dur[$label]}" "$rc" >&2
}

must() { # LABEL [allowed rc...]
    local label=$1 rc=${rcs[$1]}
    shift
    for ok in 0 "$@"; do [[ $rc == "$ok" ]] && return 0; done
    echo "bench-provider: terraform $label failed (rc=$rc):" >&2
    tail -30 "$work/$label.log" >&2
    exit 1
}

echo "== N=$N, parallelism=$parallelism, memory_mib=$min_mem, nodes n1..n$nodes" >&2
# Plans with n=0 (measurelab: only the platform) give the fixed cost of a
# plan (terraform start, provider start, schema), so the rest is per resource.
BENCH_VAR_N=0 timed data-plan0 "$datadir" plan -input=false; must data-plan0
BENCH_VAR_N=0 timed vm-plan0 "$vmdir" plan -input=false; must vm-plan0
timed data-plan "$datadir" plan -input=false; must data-plan
timed vm-plan "$vmdir" plan -input=false; must vm-plan
timed data-apply "$datadir" apply -auto-approve -input=false; must data-apply
timed vm-apply "$vmdir" apply -auto-approve -input=false; must vm-apply
# After apply: a plan refreshes N existing resources and must find no changes
# (-detailed-exitcode: 0 no changes, 2 changes).
timed data-replan "$datadir" plan -input=false -detailed-exitcode; must data-replan
timed vm-replan "$vmdir" plan -input=false -detailed-exitcode; must vm-replan
ready_vms=$(api "/v1/vms?platform=bench" | jq '[.vms[] | select(any(.conditions[]; .type == "Ready" and .status == "True"))] | length')
per_node=$(api "/v1/vms?platform=bench" | jq -r '[.vms[].node] | group_by(.) | map("\(.[0])=\(length)") | join(" ")')
timed data-destroy "$datadir" destroy -auto-approve -input=false; must data-destroy
timed vm-destroy "$vmdir" destroy -auto-approve -input=false; must vm-destroy

ratio() { echo "scale=2; $1 / $2" | bc; }
mib() { echo "scale=1; $1 / 1024" | bc; }
echo
echo "measurelab provider benchmark: N=$N, $nodes nodes, terraform -parallelism=$parallelism, $(nproc) cores, lab up $(printf %.1f "$lab_up_s") s${BENCH_LAB_ARGS:+ (lab up $BENCH_LAB_ARGS)}"
echo "VMs Ready after apply: $ready_vms/$N ($per_node)"
printf '%-22s %12s %12s %8s\n' "phase" "measurelab_vm" "terraform_data" "ratio"
for p in plan apply replan destroy; do
    printf '%-22s %11.2fs %11.2fs %7sx\n' "$p" "${dur[vm-$p]}" "${dur[data-$p]}" "$(ratio "${dur[vm-$p]}" "${dur[data-$p]}")"
done
echo "(replan = plan after apply: refresh of N existing resources; no changes in both)"
printf 'plan with n=0 (fixed cost): measurelab %.2fs, terraform_data %.2fs; per resource beyond it: measurelab %.2f ms, terraform_data %.2f ms\n' \
    "${dur[vm-plan0]}" "${dur[data-plan0]}" \
    "$(echo "scale=4; 1000 * (${dur[vm-plan]} - ${dur[vm-plan0]}) / $N" | bc)" \
    "$(echo "scale=4; 1000 * (${dur[data-plan]} - ${dur[data-plan0]}) / $N" | bc)"
printf 'provider peak RSS (VmHWM): plan %s MiB, apply %s MiB, replan %s MiB, destroy %s MiB\n' \
    "$(mib "${peak_rss[vm-plan]}")" "$(mib "${peak_rss[vm-apply]}")" "$(mib "${peak_rss[vm-replan]}")" "$(mib "${peak_rss[vm-destroy]}")"
printf 'terraform peak RSS: measurelab_vm apply %s MiB, terraform_data apply %s MiB\n' \
    "$(mib "${peak_rss[tf-vm-apply]}")" "$(mib "${peak_rss[tf-data-apply]}")"

# Where the apply time goes, per VM and overall.
python3 - "$work/vm-apply.log" "$work/vm-apply.samples" "$(cat "$work/vm-apply.start")" "$parallelism" "$labdir/logs" <<'PY'
import glob, json, re, statistics, sys
from datetime import datetime

log, samples, start, parallelism, logs = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
creating, complete = {}, {}
first_line = last_line = None
for line in open(log):
    stamp, _, text = line.partition(" ")
    t = float(stamp) - start
    first_line = t if first_line is None else first_line
    last_line = t
    m = re.match(r"measurelab_vm\.guest\[(\d+)\]: (Creating\.\.\.|Creation complete)", text)
    if m:
        (creating if m.group(2).startswith("Creating") else complete)[f"g{m.group(1)}"] = t
created, ready, ids = {}, {}, {}
for line in open(samples):
    s = json.loads(line)
    for vm in s["vms"]:
        ids[vm["i"]] = vm["n"]
        created[vm["n"]] = datetime.fromisoformat(vm["c"].replace("Z", "+00:00")).timestamp() - start
        if vm["r"] and vm["n"] not in ready:
            ready[vm["n"]] = s["t"] - start
# The node agents log each guest agent's hello on the guest channel: the
# moment the guest runs and talks, before the agent's next pass reports Ready.
hello = {}
for path in glob.glob(f"{logs}/*-agent.log"):
    for line in open(path, errors="replace"):
        m = re.match(r"(\S+)\s+INFO .*guest registered vm_id=(\S+)", line)
        if m and m.group(2) in ids and ids[m.group(2)] not in hello:
            hello[ids[m.group(2)]] = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() - start
names = [n for n in creating if n in created and n in ready and n in complete]
if not names:
    print("no per-VM breakdown (no samples)"); sys.exit(0)
def stats(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs):6.2f} s  p90 {xs[int(0.9 * (len(xs) - 1))]:6.2f} s  max {xs[-1]:6.2f} s"
request = [created[n] - creating[n] for n in names]
guest = [ready[n] - created[n] for n in names]
tail = [complete[n] - ready[n] for n in names]
total = [complete[n] - creating[n] for n in names]
print(f"apply breakdown over {len(names)} VMs (Ready seen by polling GET /v1/vms every 0.25 s):")
print(f"  terraform 'Creating' -> controller created_at : {stats(request)}   (provider + controller)")
print(f"  created_at -> first seen Ready               : {stats(guest)}   (node agent + guest, + poll interval)")
split = [n for n in names if n in hello and created[n] <= hello[n] <= ready[n] + 0.25]
if split:
    print(f"    of which created_at -> guest hello          : {stats([hello[n] - created[n] for n in split])}   "
          f"(push, desired-state fetch, define + start, port, guest agent start)")
    print(f"    and guest hello -> first seen Ready         : {stats([max(0.0, ready[n] - hello[n]) for n in split])}   "
          f"(agent pass + ReportStatus, + 0.25 s poll interval)")
print(f"  seen Ready -> terraform 'Creation complete'   : {stats(tail)}   (provider wait loop + terraform)")
print(f"  per VM total                                 : {stats(total)}")
first_create = min(creating.values())
print(f"  apply start -> first VM 'Creating'           : {first_create:6.2f} s   (terraform start, refresh, plan, platform)")
print(f"  first -> last controller created_at          : {max(created.values()) - min(created.values()):6.2f} s")
print(f"  last VM Ready seen                           : {max(ready.values()):6.2f} s after start")
print(f"  last 'Creation complete'                     : {max(complete.values()):6.2f} s after start; apply ended {last_line:6.2f} s")
in_flight = sum(total) / (max(complete.values()) - first_create)
share_guest = sum(guest) / sum(total)
print(f"  mean VMs in flight {in_flight:.1f} of parallelism {parallelism}; "
      f"node agent + guest share of per-VM time {100 * share_guest:.0f}%")
PY
