#!/usr/bin/env bash
# Build the base image the testbed's Dockerfile starts FROM, without any image registry:
# a minimal Debian 12 root made by debootstrap (Python 3.11, venv, tini, CA certificates),
# imported into the engine at DOCKER_HOST as fedsilo-base:bookworm. Skipped when it exists.
set -euo pipefail

CACHE=${FEDSILO_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedsilo-testbed}
ROOT="$CACHE/engine-root"
IMAGE=${FEDSILO_BASE_IMAGE:-fedsilo-base:bookworm}
MIRROR=${FEDSILO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
export PATH="$ROOT/usr/bin:$ROOT/usr/sbin:$PATH"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
target=$(mktemp -d /tmp/fedsilo-base.XXXXXX)
cleanup() {
    # debootstrap mounts /proc and /sys inside the target; a failed run may leave them.
    awk -v p="$target" 'index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r \
        | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
    rm -rf "$target"
}
trap cleanup EXIT
echo "base-image: debootstrap Debian bookworm into $target"
DEBOOTSTRAP_DIR="$ROOT/usr/share/debootstrap" "$ROOT/usr/sbin/debootstrap" \
    --variant=minbase --include=python3,python3-venv,tini,ca-certificates \
    bookworm "$target" "$MIRROR" >"$target.log" 2>&1 || {
    tail -n 30 "$target.log" >&2
    rm -f "$target.log"
    exit 1
}
rm -f "$target.log"
rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/*
tar -C "$target" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base-image: imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
