#!/bin/sh
# Make sure a Debian package's programs exist, installing the package when any is missing.
#   ensure_debian_package.sh PACKAGE PROGRAM... (a PROGRAM is a path or a name on PATH)
# Idempotent: does nothing when all are there. Set NO_RECOMMENDS=1 to skip recommends.
# Used by `make test` for prometheus/promtool and chromium.
set -eu

package=$1
shift

have_all() {
    for program in "$@"; do
        case $program in
            /*) [ -x "$program" ] || return 1 ;;
            *) command -v "$program" >/dev/null 2>&1 || return 1 ;;
        esac
    done
}

if have_all "$@"; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_debian_package: $* missing and apt-get not found; install $package" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_debian_package: $* missing; installing needs root:" \
        "run 'sudo apt-get install $package' (or this script as root)" >&2
    exit 1
fi

echo "ensure_debian_package: installing Debian's $package package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ "${NO_RECOMMENDS:-0}" = 1 ]; then
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null
else
    apt-get install -y -qq "$package" >/dev/null
fi

have_all "$@" || {
    echo "ensure_debian_package: installed $package but $* are still missing" >&2
    exit 1
}
