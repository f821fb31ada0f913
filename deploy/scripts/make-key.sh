#!/bin/sh
# make-key.sh PARTY ROLE: make PARTY's private key in its own directory, /pki/identity (once),
# and hand its CSR to the consortium CA through the requests volume. The key never leaves that
# directory: only this step and PARTY's own service (which gets the key as a compose secret)
# mount it.
set -eu
party=$1
role=$2
identity=${IDENTITY_DIR:-/pki/identity}
# Started as root (compose.yaml): take over the directory, which Docker may have made for the
# bind mount as root, and keep it private; then do the rest as the image's user.
if [ "$(id -u)" = 0 ]; then
    chmod 0700 "$identity"
    chown 10001:10001 "$identity"
    exec setpriv --reuid=10001 --regid=10001 --clear-groups -- /bin/sh "$0" "$@"
fi
if [ ! -f "$identity/$party.key" ]; then
    fedsilo pki csr --org "$party" --role "$role" --out "$identity"
fi
# Write then rename, so the CA never reads half a request.
cp "$identity/$party.csr" "/pki/requests/.$party.csr"
mv "/pki/requests/.$party.csr" "/pki/requests/$party.csr"
echo "make-key: $party ($role) requested a certificate"
