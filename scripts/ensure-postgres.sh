#!/usr/bin/env bash
# The contract tests start a throwaway PostgreSQL server; install its binaries if they are missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL server binaries (apt-get install postgresql) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    exit 0
fi
echo "PostgreSQL server binaries (initdb, pg_ctl) are missing: install the 'postgresql' package" >&2
echo "(Debian/Ubuntu: sudo apt-get install postgresql), then run 'make test' again." >&2
exit 1
