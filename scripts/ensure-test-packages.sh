#!/usr/bin/env bash
# System packages the tests use: PostgreSQL's server binaries (the contract tests and the chaos
# run start throwaway servers) and libfaketime (the clock-skew test runs organizations on a
# shifted clock). Installs whichever is missing; a machine without apt must provide them.
set -euo pipefail
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1; then
    missing+=(faketime)
fi
[ "${#missing[@]}" = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    exit 0
fi
echo "missing system packages: ${missing[*]}; install them (Debian/Ubuntu:" >&2
echo "sudo apt-get install ${missing[*]}), then run 'make test' again." >&2
exit 1
