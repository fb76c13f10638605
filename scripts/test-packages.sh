#!/usr/bin/env bash
# Install test of the Debian packages (docs/install.md): build the .debs with
# cargo-deb, install them with dpkg into a clean Debian root, check the
# installed units with `systemd-analyze verify`, then start the controller
# and the agent the way their units say (ExecStart=, User=, EnvironmentFile=,
# StateDirectory=, read from the installed unit files) with the installed
# settings, and see the node register over TLS; run terraform with the
# installed provider against that controller; start the guest agent from its
# unit and read its hello on a channel the test listens on. Ends with a purge.
#
# systemd cannot be PID 1 here, so the few unit settings the services depend
# on are applied by this script; a setting it does not know fails the test
# (see run_unit), so a changed unit cannot slip past it.
#
# The services run in private network, mount, PID and UTS namespaces: the
# controller's default 0.0.0.0:7070/7071 clash with nothing on the host, and
# the host name (the agent's default node name, %l) is the test's own.
#
# Runs as root (chroot, dpkg, namespaces). Called by scripts/test.sh after
# the workspace build; standalone it runs that build first.
# The clean root comes from mmdebstrap and is cached under target/ keyed by
# the packages' dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "test-packages: FAIL: $*" >&2; exit 1; }
say() { echo "test-packages: $*"; }

# Terraform in $WORK/tf as an operator's host runs it with the provider
# installed under $ROOT and no CLI configuration: /usr/share/terraform/plugins
# is on its implied mirror path ($XDG_DATA_DIRS/terraform/plugins). A private
# HOME keeps any ~/.terraformrc of the host out.
terraform_in_work() {
    (
        cd "$WORK/tf"
        unset TF_CLI_CONFIG_FILE TF_PLUGIN_CACHE_DIR
        HOME=$WORK/tf/home XDG_DATA_HOME=$WORK/tf/data XDG_DATA_DIRS=$ROOT/usr/share \
            CHECKPOINT_DISABLE=1 terraform "$@"
    )
}

# --- inside the private namespaces (re-executed by the outer part) ---------

# systemd's default PATH for services.
SERVICE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
NODE_NAME=pkgtest-node

# Values of `Key=` in unit file $1, one a line, in order.
unit_values() { sed -n "s/^$2=//p" "$1"; }

# Expand the systemd specifiers this test knows in $1.
expand_specifiers() {
    local text=$1
    case $text in *%[!lH%]*) die "unit uses a specifier this test does not emulate: $text" ;; esac
    text=${text//%l/$(hostname -s)}
    text=${text//%H/$(hostname)}
    printf '%s' "${text//%%/%}"
}

# Assignments of an EnvironmentFile (KEY=VALUE, VALUE optionally in double
# quotes), printed as KEY=VALUE lines.
read_env_file() {
    local line key value
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in '' | '#'* | ';'*) continue ;; esac
        key=${line%%=*}
        value=${line#*=}
        [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$1: not KEY=VALUE: $line"
        if [[ $value == \"*\" ]]; then value=${value:1:${#value}-2}; fi
        printf '%s=%s\n' "$key" "$value"
    done < "$1"
}

# Start the service of installed unit file $1 (a path inside $ROOT) in the
# background, as systemd would: its environment, user, umask and state
# directories. Writes the pid to $WORK/NAME.pid, output to $WORK/NAME.log.
run_unit() {
    local unit=$ROOT$1 name
    name=$(basename "$1" .service)
    [ -f "$unit" ] || die "$1 is not installed"
    # Every [Service] setting the service depends on is applied below; the
    # others only restrict the process (sandboxing) or concern restarts.
    local key
    while IFS= read -r key; do
        case $key in
            Type | User | Group | Environment | EnvironmentFile | ExecStart | StateDirectory | \
                StateDirectoryMode | UMask | Restart | RestartSec | KillMode | LimitNOFILE | \
                CapabilityBoundingSet | AmbientCapabilities | NoNewPrivileges | Protect* | \
                Private* | ReadWritePaths | Restrict* | LockPersonality | MemoryDenyWriteExecute | \
                RemoveIPC | SystemCall*) ;;
            *) die "$1: [Service] $key= is not emulated by this test; teach run_unit about it" ;;
        esac
    done < <(sed -n '/^\[Service\]/,/^\[/{s/^\([A-Za-z]*\)=.*/\1/p}' "$unit")

    local -A env=([PATH]=$SERVICE_PATH [LANG]=C.UTF-8)
    local assignment
    while IFS= read -r assignment; do
        assignment=$(expand_specifiers "$assignment")
        env[${assignment%%=*}]=${assignment#*=}
    done < <(unit_values "$unit" Environment)
    local file
    while IFS= read -r file; do
        local optional=0
        if [[ $file == -* ]]; then optional=1; file=${file:1}; fi
        if [ ! -f "$ROOT$file" ]; then
            [ "$optional" = 1 ] && continue
            die "$1: EnvironmentFile $file is not installed"
        fi
        while IFS= read -r assignment; do
            env[${assignment%%=*}]=${assignment#*=}
        done < <(read_env_file "$ROOT$file")
    done < <(unit_values "$unit" EnvironmentFile)

    # ExecStart: $VAR splits into words, ${VAR} is one word (systemd.service(5)).
    local exec_start word
    exec_start=$(expand_specifiers "$(unit_values "$unit" ExecStart)")
    [ -n "$exec_start" ] || die "$1: no ExecStart="
    local -a argv=()
    read -r -a words <<< "$exec_start"
    for word in "${words[@]}"; do
        if [[ $word =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
            local split
            read -r -a split <<< "${env[${BASH_REMATCH[1]}]-}"
            argv+=("${split[@]}")
        else
            while [[ $word =~ \$\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; do
                word=${word//"${BASH_REMATCH[0]}"/"${env[${BASH_REMATCH[1]}]-}"}
            done
            [[ $word != *'$'* ]] || die "$1: ExecStart word this test cannot expand: $word"
            argv+=("$word")
        fi
    done

    local user group uid=0 gid=0
    user=$(unit_values "$unit" User)
    group=$(unit_values "$unit" Group)
    if [ -n "$user" ]; then
        uid=$(chroot "$ROOT" id -u "$user") || die "$1: User=$user does not exist"
        gid=$(chroot "$ROOT" getent group "${group:-$user}" | cut -d: -f3)
        [ -n "$gid" ] || die "$1: Group=${group:-$user} does not exist"
    fi
    local mode dir
    mode=$(unit_values "$unit" StateDirectoryMode)
    for dir in $(unit_values "$unit" StateDirectory); do
        install -d -m 0755 "$(dirname "$ROOT/var/lib/$dir")"
        install -d -m "${mode:-0755}" -o "$uid" -g "$gid" "$ROOT/var/lib/$dir"
    done
    local umask_value
    umask_value=$(unit_values "$unit" UMask)

    local -a env_args=()
    for key in "${!env[@]}"; do env_args+=("$key=${env[$key]}"); done
    say "starting $name: ${argv[*]}"
    (
        umask "${umask_value:-0022}"
        exec env -i "${env_args[@]}" chroot --userspec="$uid:$gid" --groups="$gid" "$ROOT" "${argv[@]}"
    ) > "$WORK/$name.log" 2>&1 &
    echo $! > "$WORK/$name.pid"
}

# Poll `$@` until it succeeds, for at most $1 seconds; $2 names what for.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" > /dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
    say "$what"
}

stop_service() {
    local name=$1 pid deadline
    pid=$(cat "$WORK/$name.pid")
    kill -TERM "$pid" 2> /dev/null || die "$name exited early (log: $(tail -5 "$WORK/$name.log"))"
    deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2> /dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "$name did not stop within 20 s of SIGTERM"
        sleep 0.2
    done
    local status=0
    wait "$pid" || status=$?
    [ "$status" = 0 ] || die "$name exited $status on SIGTERM: $(tail -5 "$WORK/$name.log")"
    rm -f "$WORK/$name.pid"
}

service_alive() { kill -0 "$(cat "$WORK/$1.pid")" 2> /dev/null; }

# The installed CLI as the operator on the controller host runs it.
operator_cli() {
    chroot "$ROOT" env MEASURELAB_ENDPOINT=https://127.0.0.1:7070 \
        MEASURELAB_TOKEN="$(cat "$ROOT/var/lib/measurelab/controller/admin.token")" \
        MEASURELAB_CA_CERT=/var/lib/measurelab/controller/ca.pem \
        /usr/bin/measurelab "$@"
}

# The node as `measurelab node list` shows it, online.
node_listed_online() {
    operator_cli node list > "$WORK/nodes.txt" 2>&1 || return 1
    awk -v n="$NODE_NAME" '$1 == n && $2 == "online" { found = 1 } END { exit !found }' "$WORK/nodes.txt"
}

# The installed provider, from the host's terraform, against the installed
# controller over TLS with the controller's CA: a data source reads the node
# the agent registered, a tenant (which needs no VM) is created and
# destroyed, and the installed CLI sees both.
provider_against_controller() {
    local controller_data=$ROOT/var/lib/measurelab/controller
    cat > "$WORK/tf/live.tf" << EOF
provider "measurelab" {
  endpoint = "https://127.0.0.1:7070"
  ca_cert  = "$controller_data/ca.pem"
  token    = trimspace(file("$controller_data/admin.token"))
}

data "measurelab_node" "installed" {
  name = "$NODE_NAME"
}

resource "measurelab_tenant" "pkgtest" {
  name        = "pkgtest"
  description = "made by the package test with the installed provider"
}

output "node_status" { value = data.measurelab_node.installed.status }
output "node_agent_version" { value = data.measurelab_node.installed.agent_version }
output "tenant_id" { value = measurelab_tenant.pkgtest.id }
EOF
    terraform_in_work apply -auto-approve -input=false -no-color > "$WORK/tf/apply.log" 2>&1 ||
        die "terraform apply with the installed provider failed: $(tail -30 "$WORK/tf/apply.log")"
    local status agent_version tenant_id
    status=$(terraform_in_work output -raw node_status)
    agent_version=$(terraform_in_work output -raw node_agent_version)
    tenant_id=$(terraform_in_work output -raw tenant_id)
    [ "$status" = online ] || die "measurelab_node $NODE_NAME: status \"$status\", not online"
    [ "$agent_version" = "$VERSION" ] ||
        die "measurelab_node $NODE_NAME: agent_version \"$agent_version\", not the installed $VERSION"
    say "provider: data source measurelab_node reads $NODE_NAME online, agent $agent_version"
    [ -n "$tenant_id" ] || die "measurelab_tenant.pkgtest has no id after apply"
    tenant_listed "$tenant_id" ||
        die "tenant $tenant_id made by terraform is not in measurelab tenant list: $(cat "$WORK/tenants.txt")"
    terraform_in_work destroy -auto-approve -input=false -no-color > "$WORK/tf/destroy.log" 2>&1 ||
        die "terraform destroy with the installed provider failed: $(tail -30 "$WORK/tf/destroy.log")"
    ! tenant_listed "$tenant_id" || die "tenant $tenant_id is still listed after terraform destroy"
    say "provider: measurelab_tenant pkgtest created (measurelab tenant list shows it) and destroyed"
}

# Whether `measurelab tenant list` shows tenant id $1 named pkgtest; dies if
# the CLI fails, so a failing CLI never reads as "not listed".
tenant_listed() {
    operator_cli tenant list > "$WORK/tenants.txt" 2>&1 ||
        die "measurelab tenant list failed: $(cat "$WORK/tenants.txt")"
    awk -F'\t' -v id="$1" '$1 == id && $2 == "pkgtest" { found = 1 } END { exit !found }' "$WORK/tenants.txt"
}

# The guest agent from its installed unit and settings. Its channel is a unix
# socket this test listens on (the agent tells a socket from a serial device
# by file type), set with the overrides guest.env documents; what the agent
# writes there is kept in $WORK/channel.jsonl.
#
# The unit's ConditionVirtualization=vm keeps it from starting on node hosts,
# which install the package too; run_unit applies [Service] settings only, so
# the condition does not stop it here (it is checked to be there).
guest_agent_speaks() {
    local unit=/usr/lib/systemd/system/measurelab-guest-agent.service
    grep -qx 'ConditionVirtualization=vm' "$ROOT$unit" ||
        die "$unit lost ConditionVirtualization=vm: node hosts would start it with no channel"
    local vm_id channel=/run/measurelab-pkgtest/channel.sock env_file=$ROOT/etc/measurelab/guest.env
    vm_id=$(cat /proc/sys/kernel/random/uuid)
    grep -qx '#MEASURELAB_VM_ID=' "$env_file" && grep -q '^#MEASURELAB_CHANNEL=' "$env_file" ||
        die "/etc/measurelab/guest.env no longer documents MEASURELAB_VM_ID= and MEASURELAB_CHANNEL="
    sed -i -e "s|^#MEASURELAB_VM_ID=.*|MEASURELAB_VM_ID=$vm_id|" \
        -e "s|^#MEASURELAB_CHANNEL=.*|MEASURELAB_CHANNEL=$channel|" "$env_file"

    mkdir -p "$(dirname "$ROOT$channel")"
    # -u: the guest's side is only read; nothing is sent to it.
    socat -u "UNIX-LISTEN:$ROOT$channel" "CREATE:$WORK/channel.jsonl" 2> "$WORK/channel.log" &
    echo $! > "$WORK/guest-channel.pid"
    wait_for 10 "listening on the guest channel $channel" test -S "$ROOT$channel" ||
        die "socat made no socket at $channel: $(cat "$WORK/channel.log")"

    run_unit "$unit"
    wait_for 30 "guest agent connected to its channel and sent a line" channel_has_a_line ||
        die "guest agent sent nothing on its channel within 30 s: $(tail -20 "$WORK/measurelab-guest-agent.log")"
    # The channel carries one JSON message a line; the first is hello.
    python3 - "$WORK/channel.jsonl" "$vm_id" "$VERSION" << 'EOF' ||
import json, sys
path, vm_id, version = sys.argv[1:]
with open(path) as channel:
    hello = json.loads(channel.readline())
expected = {"type": "hello", "vm_id": vm_id, "agent_version": version}
wrong = {key: hello.get(key) for key, value in expected.items() if hello.get(key) != value}
if wrong:
    sys.exit(f"expected {expected}, got {wrong} in {hello}")
EOF
        die "the guest agent's first channel message is not the hello expected: $(head -c 2000 "$WORK/channel.jsonl")"
    say "guest agent said hello with VM id $vm_id and version $VERSION"
    # guest.env leaves the local platform API at its default address.
    wait_for 10 "guest agent's local API answers /healthz with its channel connected" \
        guest_local_api_connected ||
        die "guest agent's local API: no channel_connected=true at 127.0.0.1:7079/healthz within 10 s: $(cat "$WORK/guest-healthz.json" 2>&1)"
    stop_service measurelab-guest-agent
    # socat normally ended at the agent's EOF already.
    local listener
    listener=$(cat "$WORK/guest-channel.pid")
    kill "$listener" 2> /dev/null || true
    wait "$listener" 2> /dev/null || true
    rm -f "$WORK/guest-channel.pid"
}

# A whole line: socat may have written only part of one so far.
channel_has_a_line() { [ "$(wc -l < "$WORK/channel.jsonl")" -ge 1 ]; }

guest_local_api_connected() {
    curl -fsS http://127.0.0.1:7079/healthz > "$WORK/guest-healthz.json" || return 1
    python3 -c 'import json, sys; sys.exit(json.load(sys.stdin).get("channel_connected") is not True)' \
        < "$WORK/guest-healthz.json"
}

inside() {
    ROOT=$1 WORK=$2 VERSION=$3
    # Whatever runs stops with this script, test passed or not.
    trap 'for p in "$WORK"/*.pid; do [ -f "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null || true; done' EXIT
    ip link set lo up
    hostname "$NODE_NAME"
    # What a systemd host gives every service: /proc, /dev and a tmpfs /run.
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
    # The controller's state is written by its own user (checked below) and
    # its CA must exist before anyone can trust it.
    run_unit /usr/lib/systemd/system/measurelab-controller.service
    local ca=$ROOT/var/lib/measurelab/controller/ca.pem
    wait_for 60 "controller answers /healthz over TLS with its CA" \
        curl -fsS --cacert "$ca" https://127.0.0.1:7070/healthz ||
        die "controller: no /healthz within 60 s: $(tail -20 "$WORK/measurelab-controller.log")"
    service_alive measurelab-controller || die "controller exited"
    local uid owner
    uid=$(chroot "$ROOT" id -u measurelab)
    owner=$(stat -c %u "$ROOT/var/lib/measurelab/controller/ca.key")
    [ "$owner" = "$uid" ] || die "ca.key is owned by uid $owner, not the measurelab user ($uid)"
    [ "$(stat -c %a "$ROOT/var/lib/measurelab/controller/ca.key")" = 600 ] ||
        die "ca.key is not 0600 (UMask=/StateDirectoryMode=)"

    # The operator's steps of docs/install.md on the controller host (a
    # per-node single-use token, a bundle with it), then on the node.
    operator_cli join-token create --node "$NODE_NAME" --single-use --ttl 600 \
        > "$ROOT/root/node.token" || die "measurelab join-token create failed"
    chroot "$ROOT" /usr/bin/measurelab join-bundle --data-dir /var/lib/measurelab/controller \
        --endpoint https://127.0.0.1:7071 --join-token-file /root/node.token \
        > "$ROOT/etc/measurelab/join-bundle" || die "measurelab join-bundle failed"
    chmod 0600 "$ROOT/etc/measurelab/join-bundle"
    run_unit /usr/lib/systemd/system/measurelab-agent.service
    wait_for 60 "node $NODE_NAME registered and online (measurelab node list)" node_listed_online ||
        die "node $NODE_NAME not online within 60 s: $(cat "$WORK/nodes.txt"); agent log: $(tail -20 "$WORK/measurelab-agent.log")"
    [ -s "$ROOT/var/lib/measurelab/agent/identity.json" ] || die "the agent kept no identity in its state dir"

    provider_against_controller
    guest_agent_speaks

    stop_service measurelab-agent
    stop_service measurelab-controller
}

if [ "${1:-}" = --inside ]; then
    inside "$2" "$3" "$4"
    exit 0
fi

# --- outside: build, package, install, verify ------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root (chroot, dpkg, namespaces)"
export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
target=${CARGO_TARGET_DIR:-target}

WORK=$(mktemp -d /tmp/measurelab-pkgtest.XXXXXX)
ROOT=$WORK/root
cleanup() {
    # --inside's namespaces took their mounts and processes with them (the
    # PID namespace kills every process left in it when its first exits).
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo deb --version > /dev/null 2>&1 || die "cargo-deb is missing (scripts/setup.sh installs it)"
command -v socat > /dev/null || die "socat is missing (scripts/setup.sh installs it)"
# The same build as scripts/test.sh's (a no-op after it): building just the
# three packages would unify dependency features differently and rebuild.
cargo build -q --workspace --bins

# The dev profile: the binaries the suite has just built. cargo-deb warns
# that it is meant for release builds (docs/install.md builds those); the
# packages' layout and scripts are the same.
say "building the packages"
for args in "-p measurelab" "-p measurelab --variant controller" "-p measurelab --variant agent" \
    "-p measurelab-guest" "-p terraform-provider-measurelab"; do
    # shellcheck disable=SC2086
    cargo deb $args --profile dev --no-build --fast --quiet -o "$WORK/debs/" > /dev/null 2> "$WORK/cargo-deb.log" ||
        die "cargo deb $args: $(cat "$WORK/cargo-deb.log")"
done
mapfile -t debs < <(ls "$WORK"/debs/*.deb)
[ "${#debs[@]}" = 5 ] || die "expected 5 packages, got: ${debs[*]}"

version=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "measurelab"))')
own=" $(for deb in "${debs[@]}"; do dpkg-deb -f "$deb" Package; done | tr '\n' ' ')"
for deb in "${debs[@]}"; do
    [ "$(dpkg-deb -f "$deb" Version)" = "$version" ] || die "$deb is not version $version"
done

# The clean root: Debian minbase plus the packages' own dependencies (not
# measurelab's), so that dpkg -i below checks that they are declared, plus
# systemd as on any real host (systemd-analyze verify needs its units).
deps=systemd,$(for deb in "${debs[@]}"; do dpkg-deb -f "$deb" Depends; done | tr ',' '\n' |
    sed 's/(.*)//; s/[[:space:]]//g' | grep -v '^$' | sort -u |
    while read -r dep; do [[ $own == *" $dep "* ]] || echo "$dep"; done | paste -sd, -)
cache_dir=$target/pkg-test
rootfs=$cache_dir/rootfs-$(printf 'bookworm minbase %s' "$deps" | sha256sum | cut -c1-16).tar
if [ ! -f "$rootfs" ]; then
    say "making a clean root (bookworm minbase + $deps)"
    mkdir -p "$cache_dir"
    rm -f "$cache_dir"/rootfs-*.tar
    # The name ends in .tar: mmdebstrap picks its output format by it.
    mmdebstrap --quiet --variant=minbase --include="$deps" bookworm "$cache_dir/partial.tar" ||
        die "mmdebstrap failed"
    mv "$cache_dir/partial.tar" "$rootfs"
fi
mkdir "$ROOT"
tar -xf "$rootfs" -C "$ROOT"

# Install as an operator would, with services kept from starting (there is
# no systemd here; the generated scripts check for it anyway).
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
mkdir "$ROOT/tmp/debs"
cp "${debs[@]}" "$ROOT/tmp/debs/"
say "dpkg -i ${own}"
chroot "$ROOT" sh -c 'dpkg -i /tmp/debs/*.deb' > "$WORK/dpkg.log" 2>&1 ||
    die "dpkg -i failed: $(cat "$WORK/dpkg.log")"
chroot "$ROOT" getent passwd measurelab > /dev/null || die "the controller package made no measurelab user"
for conffile in /etc/measurelab/controller.env /etc/measurelab/agent.env /etc/measurelab/guest.env; do
    grep -qx "$conffile" "$ROOT"/var/lib/dpkg/info/*.conffiles || die "$conffile is not a conffile"
done

say "systemd-analyze verify"
units=(measurelab-controller.service measurelab-agent.service measurelab-guest-agent.service)
for unit in "${units[@]}"; do
    # verify exits 0 on some warnings; any output is a finding.
    out=$(systemd-analyze verify --root="$ROOT" "/usr/lib/systemd/system/$unit" 2>&1) ||
        die "systemd-analyze verify $unit: $out"
    [ -z "$out" ] || die "systemd-analyze verify $unit: $out"
done

# Terraform finds the installed provider with no CLI configuration, as
# docs/install.md says (terraform_in_work); it runs against the controller
# inside the namespaces below.
say "terraform init finds the installed provider in its implied mirror"
mkdir -p "$WORK/tf/home" "$WORK/tf/data"
cat > "$WORK/tf/main.tf" << EOF
terraform {
  required_providers {
    measurelab = { source = "measurelab.local/measurelab/measurelab", version = "= $version" }
  }
}
EOF
terraform_in_work init -input=false -no-color > "$WORK/tf/init.log" 2>&1 ||
    die "terraform init with the installed provider failed: $(cat "$WORK/tf/init.log")"
grep -q 'Installing measurelab.local/measurelab/measurelab' "$WORK/tf/init.log" ||
    die "terraform init did not install the provider: $(cat "$WORK/tf/init.log")"

say "starting the services from their installed units"
unshare --net --mount --uts --pid --mount-proc --fork --kill-child -- bash "$0" --inside "$ROOT" "$WORK" "$version"

say "dpkg --purge"
chroot "$ROOT" sh -c "dpkg --purge $own" > "$WORK/dpkg.log" 2>&1 ||
    die "dpkg --purge failed: $(cat "$WORK/dpkg.log")"
[ ! -e "$ROOT/var/lib/measurelab/controller" ] || die "purge left the controller's data dir"
! chroot "$ROOT" getent passwd measurelab > /dev/null || die "purge left the measurelab user"
[ ! -e "$ROOT/usr/bin/measurelab" ] || die "purge left /usr/bin/measurelab"
say "ok"
