#!/bin/sh
# Make a real `kustomize` (pinned below) available and print its path. Used by `make test`
# (tests/unit/test_deploy.py renders deploy/k8s with it). Idempotent and quiet: when the
# pinned binary is already in the cache it only prints the path. Otherwise it builds it with
# `go install` from the Go module proxy (about a minute the first time; needs Go >= 1.26).
#
#   KUSTOMIZE=/path/to/kustomize   use that binary instead (nothing is installed)
#   KUSTOMIZE_BIN_DIR=DIR          cache directory (default ~/.cache/hitl-kafka-connector/bin)
set -eu

VERSION=v5.8.2   # go 1.26; v5.8.3 needs go 1.27

if [ -n "${KUSTOMIZE:-}" ]; then
    "$KUSTOMIZE" version >/dev/null 2>&1 || {
        echo "ensure_kustomize: KUSTOMIZE=$KUSTOMIZE does not run" >&2
        exit 1
    }
    echo "$KUSTOMIZE"
    exit 0
fi

BIN_DIR=${KUSTOMIZE_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hitl-kafka-connector/bin}
BIN=$BIN_DIR/kustomize

if [ -x "$BIN" ] && [ "$("$BIN" version 2>/dev/null)" = "$VERSION" ]; then
    echo "$BIN"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "ensure_kustomize: kustomize $VERSION is not in $BIN_DIR and Go is not installed;" \
        "install Go >= 1.26, or set KUSTOMIZE to a kustomize binary" >&2
    exit 1
fi

mkdir -p "$BIN_DIR"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# GOTOOLCHAIN=local: build with this machine's Go, never download another toolchain.
if ! GOBIN="$BIN_DIR" GOTOOLCHAIN=local \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$VERSION" >"$LOG" 2>&1; then
    echo "ensure_kustomize: go install sigs.k8s.io/kustomize/kustomize/v5@$VERSION failed:" >&2
    cat "$LOG" >&2
    exit 1
fi
[ "$("$BIN" version 2>/dev/null)" = "$VERSION" ] || {
    echo "ensure_kustomize: built $BIN but it does not report $VERSION" >&2
    exit 1
}
echo "$BIN"
