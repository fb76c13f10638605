# Sourced by scripts that install Debian packages (setup.sh, pg.sh); needs root.

# apt_install_missing PKG...: install those of PKG that are not fully installed.
# Returns 0 with nothing to do. Services the packages would start
# (openvswitch-switch, libvirtd, postgresql's main cluster) are kept stopped
# with a policy-rc.d: everything here runs its own daemons with private run
# dirs.
apt_install_missing() {
    local pkg status missing=()
    for pkg in "$@"; do
        # dpkg-query prints "install ok installed" only for a fully installed package.
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    echo "installing ${missing[*]}" >&2
    local policy=/usr/sbin/policy-rc.d created_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >&2 || rc=$?
    [ "$created_policy" = 1 ] && rm -f "$policy"
    return "$rc"
}
