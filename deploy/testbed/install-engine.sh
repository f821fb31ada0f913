#!/usr/bin/env bash
# Unpack a Docker engine (Debian's docker.io, containerd, runc, tini) and debootstrap into a
# private root under the testbed cache. Nothing is installed system-wide and no service starts:
# the packages are downloaded by name from the Debian archive and extracted with dpkg -x.
set -euo pipefail

CACHE=${FEDSILO_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedsilo-testbed}
ROOT="$CACHE/engine-root"
PACKAGES=(docker.io containerd runc tini debootstrap)

if [[ -x "$ROOT/usr/sbin/dockerd" && -x "$ROOT/usr/sbin/debootstrap" ]]; then
    exit 0
fi
for tool in apt-get dpkg; do
    command -v "$tool" >/dev/null || { echo "install-engine: $tool is required (Debian/Ubuntu)" >&2; exit 1; }
done
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
# apt's sandbox user must be able to write the download directory.
chmod 0777 "$download"
fetch() { (cd "$download" && apt-get download -q "${PACKAGES[@]}" >/dev/null); }
if ! fetch; then
    # A fresh machine may have no package lists yet.
    apt-get update -q >/dev/null && fetch || {
        echo "install-engine: apt-get download ${PACKAGES[*]} failed" >&2
        exit 1
    }
fi
rm -rf "$ROOT.partial"
mkdir -p "$ROOT.partial"
for deb in "$download"/*.deb; do
    dpkg -x "$deb" "$ROOT.partial"
done
rm -rf "$ROOT"
mv "$ROOT.partial" "$ROOT"
echo "install-engine: Docker engine and debootstrap unpacked into $ROOT"
