#!/usr/bin/env bash
# The README's first command: from a fresh Debian machine to per-receiver
# multicast loss, delay and jitter, reproducing the paper's experiment.
#
#   1. scripts/setup.sh: apt packages + release build of every binary
#   2. measurelab lab up --nodes 4: controller + 4 nodes (netns, OVS, agents)
#   3. measurelab lab tfrc: a terraform CLI config serving the local provider
#   4. terraform init + apply of examples/multicast-lab: a virtual platform,
#      1 MSCS VM + 4 point VMs, the mcast programs through program
#      distribution, a measurement task and a periodic task
#   5. the per-receiver results table (terraform output)
#
# Idempotent: a second run finds the lab up (lab up repairs what is missing)
# and the apply converges with no changes.
#
# Environment:
#   SKIP_SETUP=1        skip scripts/setup.sh (packages and binaries are there)
#   LAB_NAME=mlab       lab name (default mlab; the controller listens on 127.0.0.1:7070)
#   CARGO_TARGET_DIR    where the release binaries are (default ./target)
#   DURATION_SECONDS=30 length of the measurement run
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "demo: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, OVS)"
command -v terraform >/dev/null || die "terraform is not on the PATH"

if [ "${SKIP_SETUP:-0}" != "1" ]; then
    step "setup: packages and release build (scripts/setup.sh)"
    bash scripts/setup.sh
fi

target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release
for b in measurelab measurelab-guest-agent terraform-provider-measurelab mcast-point mcast-mscs; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing; run scripts/setup.sh (or cargo build --release --workspace --bins)"
done
measurelab=$bin/measurelab
lab=${LAB_NAME:-mlab}

# The programs travel to the VMs whole (base64 over the guest channel) and the
# guest agent holds them in its VM's memory while writing them: ship them
# without debug info (49 -> 18 MiB for mcast-mscs).
programs=$target/mcast-programs
mkdir -p "$programs"
for b in mcast-point mcast-mscs; do
    if [ ! -f "$programs/$b" ] || [ "$bin/$b" -nt "$programs/$b" ]; then
        strip -o "$programs/$b.tmp" "$bin/$b" && mv "$programs/$b.tmp" "$programs/$b"
    fi
done

step "lab: 4 nodes ($measurelab lab up --nodes 4 --name $lab)"
"$measurelab" lab up --nodes 4 --name "$lab"

step "terraform CLI config for the local provider"
eval "export $("$measurelab" lab env --name "$lab" | tr '\n' ' ')"
TF_CLI_CONFIG_FILE=$("$measurelab" lab tfrc --name "$lab" --bin-dir "$bin")
export TF_CLI_CONFIG_FILE
echo "TF_CLI_CONFIG_FILE=$TF_CLI_CONFIG_FILE"

cd "$root/examples/multicast-lab"
step "terraform init"
# The mirror serves whatever provider binary was just built; a stale lock
# file would pin the previous build's checksum.
rm -f .terraform.lock.hcl
terraform init -input=false -upgrade >/dev/null

step "terraform apply (platform, 5 VMs, programs, deployments, tasks; waits for the result)"
terraform apply -input=false -auto-approve \
    -var "bin_dir=$programs" -var "duration_seconds=${DURATION_SECONDS:-30}"

step "per-receiver results (terraform output receivers)"
terraform output -json receivers | python3 -c '
import json, sys
receivers = json.load(sys.stdin)
cols = ["receiver", "status", "sent", "received", "lost", "dup", "reord", "loss_ratio",
        "delay_min", "delay_median", "delay_mean", "delay_p95", "delay_max", "ipdv_mean", "pdv", "jitter"]
rows = []
def num(v, fmt):
    return "-" if v is None else fmt.format(v)
for name, r in sorted(receivers.items()):
    rows.append([name, r["status"], num(r["packets_sent"], "{:.0f}"), num(r["packets_received"], "{:.0f}"),
                 num(r["lost"], "{:.0f}"), num(r["duplicated"], "{:.0f}"), num(r["reordered"], "{:.0f}"),
                 num(r["loss_ratio"], "{:.4f}")] +
                [num(r[k], "{:.3f}") for k in ("delay_min_ms", "delay_median_ms", "delay_mean_ms",
                 "delay_p95_ms", "delay_max_ms", "ipdv_mean_ms", "pdv_ms", "jitter_ms")])
widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
for row in rows:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
print("(delays, IPDV, PDV and jitter in ms; source point: see `terraform output source_point`)")
'
echo "source point: $(terraform output -raw source_point), run status: $(terraform output -raw result_status)"

step "admin web page"
cat <<EOT
Open $MEASURELAB_ENDPOINT/ in a browser and paste the token (the demo tenant's member
token: the researcher's view; \`measurelab lab env --operator\` prints the operator's), or open
  $MEASURELAB_ENDPOINT/#token=$MEASURELAB_TOKEN
(the token travels in the URL fragment, which the browser never sends to the server;
the lab runs TLS, so the browser must trust the lab's CA, $MEASURELAB_CA_CERT).
API: curl --cacert $MEASURELAB_CA_CERT -H "Authorization: Bearer \$MEASURELAB_TOKEN" $MEASURELAB_ENDPOINT/v1/results?task=mcast-lab-periodic
Tear down: (cd examples/multicast-lab && terraform destroy -auto-approve -var bin_dir=$programs) && $measurelab lab down --name $lab
EOT
