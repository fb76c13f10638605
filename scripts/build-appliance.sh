#!/usr/bin/env bash
# Build the `measurelab-tiny` appliance: Debian's amd64 kernel plus a busybox
# initramfs that configures eth0 from the kernel command line, mounts its data
# disk, enables its swap disk and runs the guest agent, plus the data disk's
# base image. Debian packages only; no network access beyond apt.
#
# Usage: scripts/build-appliance.sh GUEST_AGENT_BINARY [OUT_DIR]
#   GUEST_AGENT_BINARY  program run by /init as the guest agent, normally
#                 target/*/measurelab-guest-agent (cargo build -p measurelab-guest);
#                 installed as /usr/bin/measurelab-guest-agent with the shared
#                 libraries `ldd` lists, stripped when `strip` is available
#                 (a debug build shrinks from ~100 MB to ~11 MB).
#   OUT_DIR       default /var/lib/measurelab/appliances/measurelab-tiny
# Environment:
#   KERNEL_VERSION    e.g. 6.1.0-56-amd64 (default: newest in /boot, else the
#                     version linux-image-amd64 depends on, fetched with
#                     `apt-get download` and unpacked - nothing is installed)
#   APPLIANCE_VERSION version string in manifest.json (default: date-based)
#
# Output: OUT_DIR/{vmlinuz,initrd.img,disk.img,manifest.json}. disk.img is a
# small raw ext4 image: the node agent never attaches it, but gives each VM a
# qcow2 overlay of it sized `disk_mib`, which /init grows to the disk's size. The same kernel and
# initrd boot under QEMU (console=ttyS0, virtio-net) and as a Xen PV guest
# (console=hvc0, xen-netfront): Debian's amd64 kernel has CONFIG_XEN_PV=y.
#
# Kernel command line understood by /init:
#   measurelab.ip=A.B.C.D/LEN   static address of eth0 (no DHCP)
#   measurelab.gw=A.B.C.D       default route
#   measurelab.vm_id=UUID       exported as MEASURELAB_VM_ID
#   measurelab.guest_args=a,b   arguments of the guest agent (',' -> ' ')
#   measurelab.channel=PATH     guest channel device, exported as
#                               MEASURELAB_CHANNEL; the node agent passes
#                               /dev/virtio-ports/org.measurelab.guest.0 (a
#                               virtio-serial port, hence virtio_console
#                               below; the guest agent finds it in sysfs, as
#                               there is no udev). Default /dev/ttyS1: the
#                               second serial port, for guests started
#                               without the node agent's domain XML
#   measurelab.data=/dev/vda    data disk: its ext4 filesystem is grown to the
#                               whole disk and mounted on /data (a blank disk
#                               is formatted first)
#   measurelab.swap=/dev/vdb    swap disk (mkswap'd by the node agent): swapon
# Marker lines on the console (tests wait for them):
#   "measurelab-tiny: init reached vm_id=..."
#   "measurelab-tiny: eth0 <addr>" / "measurelab-tiny: no eth0"
#   "measurelab-tiny: guest started" / "measurelab-tiny: guest exited rc=N"
#   "measurelab-tiny: data <dev> on /data" / "measurelab-tiny: data <dev> failed"
#   "measurelab-tiny: swap <dev> on" / "measurelab-tiny: swap <dev> failed"
set -euo pipefail

NAME=measurelab-tiny
MIN_MEMORY_MIB=128
# Loaded in this order when present; failures are fine (virtio on Xen and
# xen-* on QEMU do not bind). Dependencies are resolved from modules.dep.
# ext4 (and the crc32c it checksums with) is a module in Debian's kernel, as
# is virtio_console (the guest channel's virtio-serial port).
MODULES=(virtio_pci virtio_net virtio_blk virtio_console crc32c_generic ext4 xen-netfront xen-blkfront)
# Base image of the data disk; small, since each VM's overlay is grown.
DISK_MIB=16
# e2fsprogs tools for the data disk (busybox has no resize2fs, and its mke2fs
# makes ext2 only); /init calls them by path, as busybox applets come first.
E2FS_TOOLS=(/sbin/resize2fs /sbin/mke2fs)

die() { echo "build-appliance: $*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 GUEST_AGENT_BINARY [OUT_DIR]"
GUEST_BINARY=$1
OUT_DIR=${2:-/var/lib/measurelab/appliances/$NAME}
[[ -f $GUEST_BINARY && -x $GUEST_BINARY ]] || die "GUEST_AGENT_BINARY $GUEST_BINARY is not an executable file"
for tool in cpio gzip sha256sum ldd mkfs.ext4 "${E2FS_TOOLS[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

WORK=$(mktemp -d /tmp/mlab-appliance.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- kernel and modules -----------------------------------------------------
KROOT=/
if [[ -z ${KERNEL_VERSION:-} ]]; then
    KERNEL_VERSION=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V | tail -1 || true)
fi
if [[ -z ${KERNEL_VERSION:-} || ! -f /boot/vmlinuz-$KERNEL_VERSION || ! -d /lib/modules/$KERNEL_VERSION ]]; then
    # No installed kernel: unpack the package instead of installing it.
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [[ -n $pkg ]] || die "cannot resolve linux-image-amd64 (run apt-get update)"
    (cd "$WORK" && apt-get download "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    mkdir -p "$WORK/kernel"
    dpkg-deb -x "$WORK"/"$pkg"_*.deb "$WORK/kernel"
    KROOT=$WORK/kernel
    KERNEL_VERSION=${pkg#linux-image-}
fi
VMLINUZ=$KROOT/boot/vmlinuz-$KERNEL_VERSION
MODDIR=$KROOT/lib/modules/$KERNEL_VERSION
[[ -f $VMLINUZ && -f $MODDIR/modules.dep ]] || die "kernel $KERNEL_VERSION incomplete under $KROOT"

# --- busybox ----------------------------------------------------------------
BUSYBOX=/bin/busybox
if ! { [[ -x $BUSYBOX ]] && ! ldd "$BUSYBOX" >/dev/null 2>&1; }; then
    # Not installed, or a dynamically linked build: use busybox-static's.
    (cd "$WORK" && apt-get download busybox-static >/dev/null) || die "apt-get download busybox-static failed"
    mkdir -p "$WORK/bb"
    dpkg-deb -x "$WORK"/busybox-static_*.deb "$WORK/bb"
    BUSYBOX=$WORK/bb/bin/busybox
fi

# --- initramfs tree ---------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,run,etc,usr/bin,lib/modules/"$KERNEL_VERSION"}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [[ -e $ROOT/bin/$applet ]] || ln -s busybox "$ROOT/bin/$applet"
done

# Module closure in load order (dependencies first).
declare -A SEEN=()
ORDER=()
add_module() {
    local rel=$1 dep
    [[ -n ${SEEN[$rel]:-} ]] && return
    SEEN[$rel]=1
    for dep in $(awk -F': *' -v m="$rel" '$1 == m {print $2}' "$MODDIR/modules.dep"); do
        add_module "$dep"
    done
    ORDER+=("$rel")
}
for module in "${MODULES[@]}"; do
    rel=$(awk -F: -v m="$module" '{n=$1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); if (n == m) {print $1; exit}}' "$MODDIR/modules.dep")
    [[ -n $rel ]] || { echo "build-appliance: module $module not in $KERNEL_VERSION (built in?)" >&2; continue; }
    add_module "$rel"
done
: > "$ROOT/etc/modules.order"
for rel in "${ORDER[@]}"; do
    case $rel in
        *.ko) ;;
        *) die "module $rel is compressed; busybox insmod needs plain .ko" ;;
    esac
    cp "$MODDIR/$rel" "$ROOT/lib/modules/$KERNEL_VERSION/"
    echo "/lib/modules/$KERNEL_VERSION/${rel##*/}" >> "$ROOT/etc/modules.order"
done

# Copies the shared libraries `ldd` lists for $1 (paths preserved, loader
# included); nothing for static binaries and scripts.
copy_libs() {
    local lib
    ldd "$1" >/dev/null 2>&1 || return 0
    for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
        [[ -f $lib ]] || continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}

# Guest agent and its shared libraries. Debug info is useless in the guest
# and would make the initramfs (which TCG unpacks slowly) ten times larger;
# a script (a test's stand-in) is copied as it is.
if ! { command -v strip >/dev/null && strip -o "$ROOT/usr/bin/measurelab-guest-agent" "$GUEST_BINARY" 2>/dev/null; }; then
    cp "$GUEST_BINARY" "$ROOT/usr/bin/measurelab-guest-agent"
fi
chmod 0755 "$ROOT/usr/bin/measurelab-guest-agent"
mkdir -p "$ROOT/var/lib/measurelab-guest"
copy_libs "$GUEST_BINARY"
for tool in "${E2FS_TOOLS[@]}"; do
    cp -L "$(command -v "$tool")" "$ROOT/sbin/"
    copy_libs "$(command -v "$tool")"
done

cat > "$ROOT/init" <<'INIT'
#!/bin/sh
# measurelab-tiny /init: PID 1 of the appliance. Must never exit.
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
say() { echo "measurelab-tiny: $*" > /dev/console; }

IP= GW= VM_ID= GUEST_ARGS= CHANNEL=/dev/ttyS1 DATA= SWAP=
for arg in $(cat /proc/cmdline); do
    case $arg in
        measurelab.ip=*) IP=${arg#*=} ;;
        measurelab.gw=*) GW=${arg#*=} ;;
        measurelab.vm_id=*) VM_ID=${arg#*=} ;;
        measurelab.guest_args=*) GUEST_ARGS=$(echo "${arg#*=}" | tr ',' ' ') ;;
        measurelab.channel=*) CHANNEL=${arg#*=} ;;
        measurelab.data=*) DATA=${arg#*=} ;;
        measurelab.swap=*) SWAP=${arg#*=} ;;
    esac
done
say "init reached vm_id=$VM_ID kernel=$(uname -r)"

while read -r module; do insmod "$module" 2>/dev/null; done < /etc/modules.order

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

# The data disk: the VM's own overlay of disk.img (or a blank disk). Grown
# online to the whole disk, so `df /data` shows disk_mib; minixdf makes df
# count the filesystem's own metadata, so the size is the disk's exactly.
if [ -n "$DATA" ]; then
    ln -sf /proc/mounts /etc/mtab
    mkdir -p /data
    if [ -z "$(dd if="$DATA" bs=4096 count=1 2>/dev/null | tr -d '\000')" ]; then
        /sbin/mke2fs -q -t ext4 -L measurelab-data "$DATA" 2>&1 | sed 's/^/mke2fs: /' > /dev/console
    fi
    if mount -t ext4 -o minixdf "$DATA" /data && /sbin/resize2fs "$DATA" > /dev/null 2>&1; then
        say "data $DATA on /data"
    else
        say "data $DATA failed"
    fi
fi
if [ -n "$SWAP" ]; then
    if swapon "$SWAP"; then say "swap $SWAP on"; else say "swap $SWAP failed"; fi
fi

export MEASURELAB_VM_ID=$VM_ID MEASURELAB_IP=$IP MEASURELAB_CHANNEL=$CHANNEL
# The agent's log goes to the console; the channel is its own device.
while :; do
    say "guest started channel=$CHANNEL"
    /usr/bin/measurelab-guest-agent $GUEST_ARGS > /dev/console 2>&1 < /dev/null
    say "guest exited rc=$?"
    sleep 5
done
INIT
chmod 0755 "$ROOT/init"

# --- output -----------------------------------------------------------------
mkdir -p "$OUT_DIR"
(cd "$ROOT" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -9 > "$WORK/initrd.img"
install -m 0644 "$VMLINUZ" "$OUT_DIR/vmlinuz"
install -m 0644 "$WORK/initrd.img" "$OUT_DIR/initrd.img"
# 4 KiB blocks: the reserved group descriptors then let /init grow it online
# up to 1024 times (16 GiB). Read-only: it is every VM's shared base.
rm -f "$OUT_DIR/disk.img"
truncate -s "${DISK_MIB}M" "$WORK/disk.img"
mkfs.ext4 -q -F -b 4096 -L measurelab-data "$WORK/disk.img"
install -m 0444 "$WORK/disk.img" "$OUT_DIR/disk.img"
DISK_SHA=$(sha256sum "$OUT_DIR/disk.img" | cut -d' ' -f1)
KERNEL_SHA=$(sha256sum "$OUT_DIR/vmlinuz" | cut -d' ' -f1)
INITRD_SHA=$(sha256sum "$OUT_DIR/initrd.img" | cut -d' ' -f1)
VERSION=${APPLIANCE_VERSION:-$(date -u +%Y%m%d.%H%M%S)}
cat > "$OUT_DIR/manifest.json" <<JSON
{
  "name": "$NAME",
  "version": "$VERSION",
  "arch": "x86_64",
  "kernel_version": "$KERNEL_VERSION",
  "min_memory_mib": $MIN_MEMORY_MIB,
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "kernel_sha256": "$KERNEL_SHA",
  "initrd_sha256": "$INITRD_SHA",
  "disk": "disk.img",
  "disk_sha256": "$DISK_SHA",
  "boot": ["qemu", "xen-pv"],
  "guest_agent": "/usr/bin/measurelab-guest-agent",
  "cmdline": "measurelab.ip=A.B.C.D/LEN measurelab.gw=A.B.C.D measurelab.vm_id=UUID measurelab.channel=/dev/virtio-ports/org.measurelab.guest.0 measurelab.data=/dev/vda measurelab.swap=/dev/vdb measurelab.guest_args=a,b"
}
JSON
echo "$OUT_DIR"
