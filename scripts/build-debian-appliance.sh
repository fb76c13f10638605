#!/usr/bin/env bash
# Build the `measurelab-debian12` appliance: a minimal Debian 12 (bookworm)
# root filesystem with tcpdump, iperf (iperf2), iperf3, libpcap, python3 and
# the measurelab guest agent, made with mmdebstrap from Debian packages, plus
# the kernel and a small initramfs that mounts it.
#
# Usage: scripts/build-debian-appliance.sh GUEST_AGENT_BINARY [OUT_DIR]
#   GUEST_AGENT_BINARY  target/*/measurelab-guest-agent (cargo build -p measurelab-guest)
#   OUT_DIR             default /var/lib/measurelab/appliances/measurelab-debian12
# Environment:
#   KERNEL_VERSION, APPLIANCE_VERSION   as for scripts/build-appliance.sh
#   DEBIAN_SOURCES   apt sources file the root filesystem is built from
#                    (default: the host's own apt configuration, so the build
#                    uses whatever mirror apt already uses here)
#
# Output: OUT_DIR/{vmlinuz,initrd.img,disk.img,manifest.json}, the same
# layout as measurelab-tiny, so the node agent boots it the same way:
#   - disk.img is the root filesystem (raw ext4). The agent never attaches it
#     but gives each VM a qcow2 overlay of it (the data disk, `measurelab.data`),
#     so every VM has its own writable root on one shared read-only base.
#   - initrd.img is measurelab-tiny's initramfs (kernel modules, busybox,
#     resize2fs) with another /init: it loads the modules, grows the VM's
#     overlay to its disk_mib, mounts it as / and switch_roots into Debian's
#     /sbin/measurelab-init, which configures eth0, enables swap and runs
#     the guest agent, as measurelab-tiny's /init does. No systemd: under
#     QEMU/TCG it would take most of a minute to boot.
# Kernel command line: that of measurelab-tiny (see build-appliance.sh);
# measurelab.data is required (the root filesystem).
# Marker lines on the console (tests wait for them), as measurelab-tiny's:
#   "measurelab-debian12: root <dev> mounted" / "... root <dev> failed"
#   "measurelab-debian12: init reached vm_id=..."
#   "measurelab-debian12: eth0 <mac> <addr>" / "measurelab-debian12: no eth0"
#   "measurelab-debian12: guest started channel=..." / "... guest exited rc=N"
set -euo pipefail

NAME=measurelab-debian12
SUITE=bookworm
MIN_MEMORY_MIB=256
PACKAGES=(iproute2 iputils-ping tcpdump iperf iperf3 libpcap0.8 python3 e2fsprogs procps)
# Free space left in the base image; each VM's overlay grows it to disk_mib.
HEADROOM_MIB=64

die() { echo "build-debian-appliance: $*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 GUEST_AGENT_BINARY [OUT_DIR]"
GUEST_BINARY=$1
OUT_DIR=${2:-/var/lib/measurelab/appliances/$NAME}
[[ -f $GUEST_BINARY && -x $GUEST_BINARY ]] || die "GUEST_AGENT_BINARY $GUEST_BINARY is not an executable file"
for tool in mmdebstrap cpio gzip sha256sum mkfs.ext4 du; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs it)"
done
[[ $(id -u) == 0 ]] || die "must run as root (mmdebstrap's root mode keeps file ownership)"

if [[ -z ${DEBIAN_SOURCES:-} ]]; then
    for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [[ -s $candidate ]]; then DEBIAN_SOURCES=$candidate; break; fi
    done
fi
[[ -n ${DEBIAN_SOURCES:-} && -s $DEBIAN_SOURCES ]] || die "no apt sources file found; set DEBIAN_SOURCES"

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/mlab-debian.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- kernel, modules and initramfs tools: measurelab-tiny's -----------------
APPLIANCE_VERSION=${APPLIANCE_VERSION:-} bash "$SCRIPTS/build-appliance.sh" "$GUEST_BINARY" "$WORK/tiny" >/dev/null
KERNEL_VERSION=$(sed -n 's/.*"kernel_version": "\(.*\)",/\1/p' "$WORK/tiny/manifest.json")
[[ -n $KERNEL_VERSION ]] || die "cannot read kernel_version from the tiny manifest"
INITRD=$WORK/initrd
mkdir -p "$INITRD"
(cd "$INITRD" && gzip -dc "$WORK/tiny/initrd.img" | cpio -id --quiet)
# The guest agent runs from the Debian root, not from the initramfs.
rm -f "$INITRD/usr/bin/measurelab-guest-agent"

cat > "$INITRD/init" <<'INIT'
#!/bin/sh
# measurelab-debian12 initramfs /init: mount the VM's overlay as / and hand
# over to Debian's /sbin/measurelab-init.
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
say() { echo "measurelab-debian12: $*" > /dev/console; }
DATA=
for arg in $(cat /proc/cmdline); do
    case $arg in measurelab.data=*) DATA=${arg#*=} ;; esac
done
while read -r module; do insmod "$module" 2>/dev/null; done < /etc/modules.order
tries=0
while [ -n "$DATA" ] && [ ! -b "$DATA" ] && [ $tries -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
mkdir -p /newroot
if [ -n "$DATA" ] && mount -t ext4 "$DATA" /newroot; then
    ln -sf /proc/mounts /etc/mtab
    # The overlay is disk_mib large; the filesystem is the base image's size.
    /sbin/resize2fs "$DATA" > /dev/null 2>&1
    say "root $DATA mounted"
    mount -o move /dev /newroot/dev
    umount /sys /proc
    exec switch_root /newroot /sbin/measurelab-init
fi
say "root ${DATA:-(no measurelab.data)} failed"
while :; do sleep 3600; done
INIT
chmod 0755 "$INITRD/init"

# --- Debian root filesystem --------------------------------------------------
ROOTFS=$WORK/rootfs
# Documentation, man pages and translations are of no use in a guest and
# make up a good part of the image.
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    --quiet \
    "$SUITE" "$ROOTFS" "$DEBIAN_SOURCES" || die "mmdebstrap failed (see above)"

if ! { command -v strip >/dev/null && strip -o "$ROOTFS/usr/bin/measurelab-guest-agent" "$GUEST_BINARY" 2>/dev/null; }; then
    cp "$GUEST_BINARY" "$ROOTFS/usr/bin/measurelab-guest-agent"
fi
chmod 0755 "$ROOTFS/usr/bin/measurelab-guest-agent"
mkdir -p "$ROOTFS/var/lib/measurelab-guest" "$ROOTFS/data"
echo "$NAME" > "$ROOTFS/etc/hostname"

cat > "$ROOTFS/sbin/measurelab-init" <<'INIT'
#!/bin/sh
# measurelab-debian12 /sbin/measurelab-init: PID 1 once the root is mounted.
# Does what measurelab-tiny's /init does after its modules. Must never exit.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
say() { echo "measurelab-debian12: $*" > /dev/console; }

IP= GW= VM_ID= GUEST_ARGS= CHANNEL=/dev/ttyS1 SWAP=
for arg in $(cat /proc/cmdline); do
    case $arg in
        measurelab.ip=*) IP=${arg#*=} ;;
        measurelab.gw=*) GW=${arg#*=} ;;
        measurelab.vm_id=*) VM_ID=${arg#*=} ;;
        measurelab.guest_args=*) GUEST_ARGS=$(echo "${arg#*=}" | tr ',' ' ') ;;
        measurelab.channel=*) CHANNEL=${arg#*=} ;;
        measurelab.swap=*) SWAP=${arg#*=} ;;
    esac
done
say "init reached vm_id=$VM_ID kernel=$(uname -r) debian=$(cat /etc/debian_version)"

hostname "$(cat /etc/hostname)"
ip link set lo up
tries=0
while [ ! -e /sys/class/net/eth0 ] && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    [ -n "$IP" ] && ip addr add "$IP" dev eth0
    ip link set eth0 up
    [ -n "$GW" ] && ip route add default via "$GW"
    say "eth0 $(cat /sys/class/net/eth0/address) ${IP:-no-address}"
else
    say "no eth0"
fi
if [ -n "$SWAP" ]; then
    if swapon "$SWAP"; then say "swap $SWAP on"; else say "swap $SWAP failed"; fi
fi

export MEASURELAB_VM_ID=$VM_ID MEASURELAB_IP=$IP MEASURELAB_CHANNEL=$CHANNEL
while :; do
    say "guest started channel=$CHANNEL"
    /usr/bin/measurelab-guest-agent $GUEST_ARGS > /dev/console 2>&1 < /dev/null
    say "guest exited rc=$?"
    sleep 5
done
INIT
chmod 0755 "$ROOTFS/sbin/measurelab-init"

# --- output -----------------------------------------------------------------
mkdir -p "$OUT_DIR"
(cd "$INITRD" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -9 > "$WORK/initrd.img"
USED_MIB=$(( $(du -sm "$ROOTFS" | cut -f1) ))
DISK_MIB=$(( USED_MIB + USED_MIB / 4 + HEADROOM_MIB ))
rm -f "$OUT_DIR/disk.img"
truncate -s "${DISK_MIB}M" "$WORK/disk.img"
# 4 KiB blocks: room for online growth to many times the base size.
mkfs.ext4 -q -F -b 4096 -L measurelab-root -d "$ROOTFS" "$WORK/disk.img"
install -m 0644 "$WORK/tiny/vmlinuz" "$OUT_DIR/vmlinuz"
install -m 0644 "$WORK/initrd.img" "$OUT_DIR/initrd.img"
install -m 0444 "$WORK/disk.img" "$OUT_DIR/disk.img"
DISK_SHA=$(sha256sum "$OUT_DIR/disk.img" | cut -d' ' -f1)
KERNEL_SHA=$(sha256sum "$OUT_DIR/vmlinuz" | cut -d' ' -f1)
INITRD_SHA=$(sha256sum "$OUT_DIR/initrd.img" | cut -d' ' -f1)
VERSION=${APPLIANCE_VERSION:-$(date -u +%Y%m%d.%H%M%S)}
DEBIAN_VERSION=$(cat "$ROOTFS/etc/debian_version")
PACKAGE_LIST=$(chroot "$ROOTFS" dpkg-query -W -f '${Package}=${Version}\n' "${PACKAGES[@]}" | sed 's/.*/"&"/' | paste -sd, -)
cat > "$OUT_DIR/manifest.json" <<JSON
{
  "name": "$NAME",
  "version": "$VERSION",
  "arch": "x86_64",
  "distribution": "debian $DEBIAN_VERSION ($SUITE)",
  "packages": [$PACKAGE_LIST],
  "kernel_version": "$KERNEL_VERSION",
  "min_memory_mib": $MIN_MEMORY_MIB,
  "min_disk_mib": $DISK_MIB,
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "kernel_sha256": "$KERNEL_SHA",
  "initrd_sha256": "$INITRD_SHA",
  "disk": "disk.img",
  "disk_sha256": "$DISK_SHA",
  "boot": ["qemu"],
  "guest_agent": "/usr/bin/measurelab-guest-agent",
  "cmdline": "measurelab.data=/dev/vda measurelab.ip=A.B.C.D/LEN measurelab.gw=A.B.C.D measurelab.vm_id=UUID measurelab.channel=/dev/virtio-ports/org.measurelab.guest.0 measurelab.swap=/dev/vdb measurelab.guest_args=a,b"
}
JSON
echo "$OUT_DIR"
