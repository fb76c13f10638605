# Sourced by scripts that install Debian packages (setup.sh, pg.sh); needs root.

# apt_not_installed PKG...: print those of PKG that are not fully installed.
apt_not_installed() {
    local pkg status
    for pkg in "$@"; do
        # dpkg-query prints "install ok installed" only for a fully installed package.
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || echo "$pkg"
    done
}

# apt_install_missing PKG...: install those of PKG that are not fully installed,
# and check that all of PKG are installed afterwards. Returns 0 with nothing to
# do. Services the packages would start (openvswitch-switch, libvirtd,
# postgresql's main cluster) are kept stopped with a policy-rc.d: everything
# here runs its own daemons with private run dirs.
#
# A second round installs what the first one removed: a machine may carry a
# listed package in a version from another suite (seen: qemu-utils from
# bookworm-backports) that a newly installed one conflicts with (qemu-system-x86
# from bookworm), so apt removes it; installed again, it comes from the suite of
# the rest.
apt_install_missing() {
    local missing round
    mapfile -t missing < <(apt_not_installed "$@")
    [ ${#missing[@]} -gt 0 ] || return 0
    local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || rc=$?
    for round in 1 2; do
        [ "$rc" = 0 ] && [ ${#missing[@]} -gt 0 ] || break
        echo "installing (round $round) ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >&2 || rc=$?
        mapfile -t missing < <(apt_not_installed "$@")
    done
    [ "$created_policy" = 1 ] && rm -f "$policy"
    if [ "$rc" = 0 ] && [ ${#missing[@]} -gt 0 ]; then
        echo "apt-get left these packages not installed: ${missing[*]}" >&2
        rc=1
    fi
    return "$rc"
}
