#!/usr/bin/env bash
# Self-signed certificates for a vxnet deployment (example; use your own PKI in production).
# usage: deploy/make-certs.sh OUTDIR NAME IP [IP...]
#   OUTDIR/ca.pem, ca.key            the CA (create once, keep ca.key offline)
#   OUTDIR/NAME.pem, NAME.key        a certificate for NAME valid for the given IPs
set -euo pipefail
out=$1; name=$2; shift 2
mkdir -p "$out"; cd "$out"
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=vxnet-ca" \
    -keyout ca.key -out ca.pem 2>/dev/null
fi
san="DNS:$name"; for ip in "$@"; do san="$san,IP:$ip"; done
openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$name.ext"
openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile "$name.ext" -out "$name.pem" 2>/dev/null
rm -f "$name.csr" "$name.ext"
chmod 600 ca.key "$name.key"  # private keys: the owner's alone
echo "$out/$name.pem $out/$name.key (CA: $out/ca.pem)"
