# shellcheck shell=bash
# Sourced by deploy/test.sh and deploy/standalone.sh: installs the Debian packages the build
# and the tests need, each only when it is missing, so a second run installs nothing and
# touches no network.
#
# Usage: ensure_debian_packages pkg...   (apt-get update runs at most once per shell)

_apt_updated=0

# Runs a command as root: directly when we are root, through sudo otherwise.
_as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: '$*' needs root and sudo is not installed" >&2
        return 1
    fi
}

ensure_debian_packages() {
    if [[ $# -eq 0 ]]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: missing system packages ($*) and no apt-get to install them;" \
            "install their equivalents by hand" >&2
        return 1
    fi
    echo "installing system packages: $*"
    if [[ $_apt_updated -eq 0 ]]; then
        _as_root apt-get update -q
        _apt_updated=1
    fi
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null
}

# True when bindgen (librocksdb-sys) can find libclang together with clang's builtin headers.
# The unversioned libclang.so symlink ships in libclang-N-dev, which depends on the headers
# package, so its presence means the development package is installed; a bare libclang1
# runtime is not enough.
have_libclang_dev() {
    if [[ -n "${LIBCLANG_PATH:-}" ]]; then
        return 0
    fi
    compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null ||
        dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'
}

# True when a Debian package is installed (used where there is no single file to test for).
have_debian_package() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

require_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
        return 1
    fi
}
