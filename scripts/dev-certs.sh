#!/usr/bin/env bash
# Writes a development CA and a server certificate for the bridge (names
# localhost, bridge, 127.0.0.1) into deploy/secrets/tls, for docker compose
# with TLS (see deploy/secrets/tls/README.md). Laptop use only.
set -euo pipefail
cd "$(dirname "$0")/../deploy/secrets/tls"
command -v openssl >/dev/null || { echo "dev-certs: openssl is missing (apt-get install openssl)" >&2; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=jetsync dev CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=bridge" -keyout bridge.key -out bridge.csr 2>/dev/null
openssl x509 -req -in bridge.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile <(printf "subjectAltName=DNS:localhost,DNS:bridge,IP:127.0.0.1\nextendedKeyUsage=serverAuth") \
  -out bridge.crt 2>/dev/null
rm -f bridge.csr ca.srl
chmod 644 bridge.key # read by the image's nonroot user through the bind mount
echo "wrote $(pwd)/{ca.crt,bridge.crt,bridge.key}"
