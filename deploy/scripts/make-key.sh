#!/bin/sh
# make-key.sh PARTY ROLE: make PARTY's private key in its own volume (once) and hand its CSR to
# the consortium CA through the requests volume. The key stays in /var/lib/fedsilo/identity.
set -eu
party=$1
role=$2
identity=/var/lib/fedsilo/identity
if [ ! -f "$identity/$party.key" ]; then
    fedsilo pki csr --org "$party" --role "$role" --out "$identity"
fi
# Write then rename, so the CA never reads half a request.
cp "$identity/$party.csr" "/pki/requests/.$party.csr"
mv "/pki/requests/.$party.csr" "/pki/requests/$party.csr"
echo "make-key: $party ($role) requested a certificate"
