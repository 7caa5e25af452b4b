#!/bin/sh
# Make sure `prometheus` and `promtool` are on PATH, installing Debian's `prometheus` package
# when either is missing. Idempotent: does nothing when both are there. Used by `make test`
# (tests/unit/test_dashboard.py runs promtool; tests/integration/test_prometheus.py runs a
# real Prometheus server).
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_prometheus: prometheus/promtool missing and apt-get not found;" \
        "install Prometheus (>= 2.42) so both are on PATH" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_prometheus: prometheus/promtool missing; installing needs root:" \
        "run 'sudo apt-get install prometheus' (or this script as root)" >&2
    exit 1
fi

echo "ensure_prometheus: installing Debian's prometheus package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: the node exporter and other recommends are not needed. The tests
# start their own server on a free port, so a packaged service on :9090 does not interfere.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || {
    echo "ensure_prometheus: installed the package but prometheus/promtool are not on PATH" >&2
    exit 1
}
