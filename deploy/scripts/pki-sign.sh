#!/bin/sh
# pki-sign.sh: the consortium CA as a one-shot step. It makes the CA once (its key stays in the
# CA volume), then signs every CSR in /pki/requests into /pki/certs with ca.crt beside them.
# The coordinator's certificate names COORDINATOR_NAMES (space-separated DNS names) and
# 127.0.0.1, so participants can dial it by service name and probes by localhost.
# /pki/certs is the directory the compose secrets point at (certificates are public).
set -eu
# Started as root (compose.yaml): take over /pki/certs, which Docker may have made for the bind
# mount as root; then do the rest as the image's user.
if [ "$(id -u)" = 0 ]; then
    chmod 0755 /pki/certs
    chown 10001:10001 /pki/certs
    exec setpriv --reuid=10001 --regid=10001 --clear-groups -- /bin/sh "$0" "$@"
fi
# The CA key is encrypted with the passphrase in CA_PASSPHRASE_FILE when that is set (a real
# consortium); the throwaway testbed CA, which lives only in its volume, is written unencrypted.
if [ -n "${CA_PASSPHRASE_FILE:-}" ]; then
    passphrase="--passphrase-file $CA_PASSPHRASE_FILE"
else
    passphrase="--no-passphrase"
fi
if [ ! -f /pki/ca/ca.key ]; then
    # shellcheck disable=SC2086 # the option and its file are separate arguments on purpose
    fedsilo pki init --out /pki/ca --name "${CA_NAME:-fedsilo testbed CA}" $passphrase
fi
if [ "$passphrase" = "--no-passphrase" ]; then
    passphrase=""
fi
cp /pki/ca/ca.crt /pki/certs/.ca.crt
mv /pki/certs/.ca.crt /pki/certs/ca.crt
found=0
for request in /pki/requests/*.csr; do
    [ -f "$request" ] || continue
    found=1
    party=$(basename "$request" .csr)
    names=""
    if [ "$party" = "coordinator" ]; then
        for name in ${COORDINATOR_NAMES:-coordinator localhost}; do
            names="$names --dns $name"
        done
        names="$names --ip 127.0.0.1"
    fi
    # Re-issued on every run: a party whose volume was wiped has a new key and a new CSR.
    rm -f "/pki/certs/.$party.crt"
    # shellcheck disable=SC2086 # names and options are separate arguments on purpose
    fedsilo pki sign --ca /pki/ca --csr "$request" --out "/pki/certs/.$party.crt" $names $passphrase
    mv "/pki/certs/.$party.crt" "/pki/certs/$party.crt"
done
[ "$found" = 1 ] || { echo "pki-sign: no certificate requests in /pki/requests" >&2; exit 1; }
# The consortium's membership list, signed by the CA: every organization's certificate (not the
# coordinator's or the admin's). Participants take part in secure rounds only with the
# organizations it admits; the admin service publishes it (admin-job.sh).
members=""
for cert in /pki/certs/*.crt; do
    case "$(basename "$cert" .crt)" in
        ca|coordinator|admin) ;;
        *) members="$members --member $cert" ;;
    esac
done
previous=""
if [ -f /pki/certs/membership.json ]; then
    previous="--previous /pki/certs/membership.json"
fi
# shellcheck disable=SC2086 # options and their values are separate arguments on purpose
fedsilo pki membership sign --ca /pki/ca $members $previous --out /pki/certs/.membership.json \
    $passphrase
mv /pki/certs/.membership.json /pki/certs/membership.json
