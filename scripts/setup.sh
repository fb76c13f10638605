#!/usr/bin/env bash
# Fresh-machine setup (Debian, root): install the packages listed in
# scripts/packages.txt, then build every binary in release mode.
#
# Idempotent: apt-get update and install run only when a listed package is
# missing, and cargo rebuilds only what changed. It starts no service and
# assumes none is running (tests and `measurelab lab up` start their own
# ovsdb-server/ovs-vswitchd with private run dirs).
#
# Environment:
#   SKIP_BUILD=1   install packages only (scripts/test.sh builds by itself)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get install, network namespaces)"
[ -f scripts/packages.txt ] || die "scripts/packages.txt is missing"

mapfile -t packages < <(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' scripts/packages.txt | awk '{print $1}')

# shellcheck source=lib/apt.sh
. scripts/lib/apt.sh
if apt_install_missing "${packages[@]}"; then
    echo "setup: all ${#packages[@]} packages installed"
else
    die "apt-get could not install the missing packages"
fi

# The standard OpenAPI validator scripts/test.sh runs on controller/openapi.json.
# PIP_BREAK_SYSTEM_PACKAGES: Debian's own python3 refuses pip installs without it.
openapi_validator_version=0.9.0
if [ "$(python3 -m pip show openapi-spec-validator 2>/dev/null | sed -n 's/^Version: //p')" \
    != "$openapi_validator_version" ]; then
    echo "setup: installing openapi-spec-validator $openapi_validator_version"
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q "openapi-spec-validator==$openapi_validator_version"
fi

# cargo-fuzz for scripts/fuzz.sh. It builds with the nightly toolchain the machine
# carries beside stable (libFuzzer's coverage instrumentation needs it); no other
# toolchain can be fetched, so a missing nightly is an error, not an install.
cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$cargo_fuzz_version" ]; then
    echo "setup: installing cargo-fuzz $cargo_fuzz_version"
    cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version"
fi
rustup toolchain list | grep -q '^nightly' ||
    die "the nightly toolchain is missing (scripts/fuzz.sh needs it; it comes with the machine)"

# cargo-deb makes the Debian packages (docs/install.md); scripts/test-packages.sh
# builds and installs them. Pinned: a newer one may refuse the dev profile
# that test uses.
cargo_deb_version=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "setup: installing cargo-deb $cargo_deb_version"
    cargo install -q cargo-deb --version "$cargo_deb_version" --locked
fi

if [ "${SKIP_BUILD:-0}" != "1" ]; then
    command -v cargo >/dev/null || die "cargo is not installed (the Rust toolchain comes with the machine)"
    cargo build --release --workspace --bins
fi
