#!/bin/sh
# Initialise the cluster on first start (user, password, database from the environment), then
# run postgres in the foreground as PID 1's only process.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >"$password_file"
    initdb --username="${POSTGRES_USER:-postgres}" --pwfile="$password_file" \
        --auth-host=scram-sha-256 --auth-local=trust >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    database=${POSTGRES_DB:-${POSTGRES_USER:-postgres}}
    if [ "$database" != postgres ]; then
        postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE DATABASE "$database" OWNER "${POSTGRES_USER:-postgres}";
SQL
    fi
fi
if [ "${1:-}" = "postgres" ]; then
    shift
    exec postgres -D "$PGDATA" "$@"
fi
exec "$@"
