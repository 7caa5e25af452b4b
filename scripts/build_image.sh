#!/bin/sh
# Build deploy/docker/Dockerfile with podman from Debian packages only (`make image`).
#
# No container registry is needed: the Python base image is made with debootstrap (Debian
# bookworm, minbase + python3.11, venv, ca-certificates) and `podman import`ed as
# localhost/hitl-python-base:bookworm. Its tarball is cached outside the repository
# (HITL_IMAGE_CACHE, default /var/cache/hitl-image; delete it to rebuild the base). The build
# runs with --isolation chroot (no user namespaces or runc needed) and runs
# `hitl-connector --help` and `hitl-connector check` inside the image (see the Dockerfile).
#
#   sh scripts/build_image.sh [TAG]        (default hitl-kafka-connector:dev)
set -eu

tag=${1:-hitl-kafka-connector:dev}
cache=${HITL_IMAGE_CACHE:-/var/cache/hitl-image}
# The Debian mirror this host's apt already uses (deb822 .sources, else sources.list), unless
# DEBIAN_MIRROR names one.
host_mirror() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}
mirror=${DEBIAN_MIRROR:-$(host_mirror)}
base=localhost/hitl-python-base:bookworm
tarball=$cache/bookworm-python-base.tar
root=$(cd "$(dirname "$0")/.." && pwd)
ca_bundle=${HITL_IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

sh "$root/scripts/ensure_debian_package.sh" podman podman
sh "$root/scripts/ensure_debian_package.sh" debootstrap debootstrap

started=$(date +%s)
if [ ! -s "$tarball" ]; then
    [ "$(id -u)" -eq 0 ] || { echo "build_image: debootstrap needs root" >&2; exit 1; }
    [ -n "$mirror" ] || {
        echo "build_image: no Debian mirror in this host's apt sources; set DEBIAN_MIRROR" >&2
        exit 1
    }
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    echo "build_image: debootstrap bookworm into $rootfs (about a minute) ..." >&2
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
        tail -20 "$cache/debootstrap.log" >&2
        rm -rf "$rootfs"
        exit 1
    }
    # Trust what this host trusts: where HTTPS goes through an intercepting proxy, its CA is
    # in the host's bundle (HITL_IMAGE_CA_BUNDLE, default the Debian bundle path), and pip
    # in the build must accept it. The image's own bundle is Debian's otherwise.
    if [ -s "$ca_bundle" ]; then
        cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    # Smaller base: no apt lists, caches or docs in the image.
    rm -rf "$rootfs/var/lib/apt/lists"/* "$rootfs/var/cache/apt"/*.bin \
        "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/usr/share/doc" "$rootfs/usr/share/man"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
fi
if ! podman image exists "$base"; then
    # pip (vendored certifi) uses the system bundle only when told to.
    podman import --change 'CMD ["python3"]' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' "$tarball" "$base" >/dev/null
fi
echo "build_image: base $base ready after $(($(date +%s) - started)) s" >&2

podman build --isolation chroot --build-arg "PYTHON_IMAGE=$base" \
    -f "$root/deploy/docker/Dockerfile" -t "$tag" "$root"
# Running a container may be impossible where the build works (no cgroups or rlimits in a
# sandbox); the build already ran the checks, so this is a note, not a failure.
if ! out=$(podman run --rm --network none "$tag" --help 2>&1); then
    echo "build_image: note: podman run failed here ($(echo "$out" | tail -1));" \
        "the build ran the checks" >&2
fi
echo "build_image: $tag built in $(($(date +%s) - started)) s" >&2
