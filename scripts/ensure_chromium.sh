#!/bin/sh
# Make sure Debian's `chromium` is at /usr/bin/chromium, installing the package when it is
# missing. Idempotent: does nothing when it is there. Used by `make test`
# (tests/integration/test_reviewer_ui.py drives it headless through Playwright; browser
# downloads by test tools are not possible, so the distribution's build is used).
set -eu

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM missing and apt-get not found;" \
        "install Chromium so that $CHROMIUM exists" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: $CHROMIUM missing; installing needs root:" \
        "run 'sudo apt-get install chromium' (or this script as root)" >&2
    exit 1
fi

echo "ensure_chromium: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null

[ -x "$CHROMIUM" ] || {
    echo "ensure_chromium: installed the package but $CHROMIUM is missing" >&2
    exit 1
}
