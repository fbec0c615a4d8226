#!/usr/bin/env bash
# Make a test CA, a broker certificate for 127.0.0.1 and one client certificate per name
# (CN = robot id, or "planner"): for trying mTLS + per-robot ACLs, never for production.
#
#   tools/make_test_certs.sh OUT_DIR cobot-1 cobot-2 planner
set -euo pipefail
out=${1:?usage: make_test_certs.sh OUT_DIR NAME...}
shift
mkdir -p "$out"
cd "$out"
days=30
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
  -subj "/CN=cobot_hybrid test CA" -keyout ca.key -out ca.crt 2>/dev/null
sign() {  # name, extension
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
    -extfile <(printf '%s' "$2") -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
sign broker 'subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth'
for name in "$@"; do
  sign "$name" 'extendedKeyUsage=clientAuth'
done
chmod 600 ./*.key
echo "$out: ca.crt broker.{crt,key} $(printf '%s.{crt,key} ' "$@")"
