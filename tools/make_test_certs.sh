#!/usr/bin/env bash
# Make test CAs and certificates for trying mTLS + per-role ACLs, never for production:
# - ca.crt: the robots' CA; it also signs the broker's certificate (127.0.0.1), so every
#   client verifies the broker against ca.crt;
# - one client certificate per robot NAME (CN = robot id), signed by ca.crt;
# - cloud-ca.crt and one client certificate per name after --cloud (e.g. planner), signed by
#   the cloud CA: only those are accepted on the cloud services' listener.
#
#   tools/make_test_certs.sh OUT_DIR cobot-1 cobot-2 --cloud planner
set -euo pipefail
out=${1:?usage: make_test_certs.sh OUT_DIR ROBOT... [--cloud NAME...]}
shift
mkdir -p "$out"
cd "$out"
days=30
make_ca() {  # file stem, subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=$2" -keyout "$1.key" -out "$1.crt" 2>/dev/null
}
sign() {  # name, CA stem, extension
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days $days \
    -extfile <(printf '%s' "$3") -out "$1.crt" 2>/dev/null
  rm -f "$1.csr"
}
make_ca ca 'cobot_hybrid test robot CA'
make_ca cloud-ca 'cobot_hybrid test cloud CA'
sign broker ca 'subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth'
ca=ca
made=()
for name in "$@"; do
  if [ "$name" = --cloud ]; then
    ca=cloud-ca
    continue
  fi
  sign "$name" "$ca" 'extendedKeyUsage=clientAuth'
  made+=("$name.{crt,key}($ca)")
done
chmod 600 ./*.key
echo "$out: ca.crt cloud-ca.crt broker.{crt,key} ${made[*]}"
