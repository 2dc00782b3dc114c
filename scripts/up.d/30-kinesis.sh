# shellcheck shell=bash
# Sourced by scripts/up.sh (which has set -euo pipefail, wait_port and the
# pids array): runs a Kinesis-compatible server and sink-kinesis.
#
#   KINESIS_ENDPOINT=http://host:port   use that server (LocalStack, AWS-compatible) instead
#   KINESIS_PORT=4567                   port of the local kinesalite (data in ./data/kinesis)
#
# sink-kinesis reads deploy/local/sink-kinesis.yaml: every order event goes
# to the stream jetsync-events (created with 2 shards if missing). AWS
# credentials come from the SDK's chain; for the local server dummy ones
# are set when none are.

kinesis_port=${KINESIS_PORT:-4567}
kinesis_endpoint=${KINESIS_ENDPOINT:-}
kinesis_ok=1

if [ -n "${kinesis_endpoint}" ]; then
  echo "kinesis: using KINESIS_ENDPOINT=${kinesis_endpoint}"
elif (exec 3<>"/dev/tcp/127.0.0.1/${kinesis_port}") 2>/dev/null; then
  kinesis_endpoint="http://127.0.0.1:${kinesis_port}"
  echo "kinesis: using the server already listening on 127.0.0.1:${kinesis_port}"
else
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing nodejs and npm with apt-get (for kinesalite) ..."
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "kinesis: node and npm are missing (apt-get install nodejs npm), or set KINESIS_ENDPOINT; sink-kinesis is not started" >&2
    kinesis_ok=0
  else
    kl=testenv/kinesalite
    # npm ci when node_modules is missing or older than the lock file.
    if [ ! -f "$kl/node_modules/kinesalite/package.json" ] || [ ! -f "$kl/node_modules/.package-lock.json" ] ||
       [ "$kl/package-lock.json" -nt "$kl/node_modules/.package-lock.json" ]; then
      echo "kinesis: npm ci in $kl ..."
      npm ci --prefix "$kl" --no-audit --no-fund >/dev/null
    fi
    mkdir -p data/kinesis
    KINESALITE_PATH="$PWD/data/kinesis" KINESALITE_OWNER_PID=$$ node "$kl/server.js" "${kinesis_port}" &
    pids+=($!)
    wait_port 127.0.0.1 "${kinesis_port}" kinesalite
    kinesis_endpoint="http://127.0.0.1:${kinesis_port}"
  fi
fi

if [ "${kinesis_ok}" = 1 ]; then
  JETSYNC_KINESIS_ENDPOINT="${kinesis_endpoint}" \
  AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}" \
  AWS_REGION="${AWS_REGION:-us-east-1}" AWS_EC2_METADATA_DISABLED=true \
    bin/sink-kinesis -config "${KINESIS_SINK_CONFIG:-deploy/local/sink-kinesis.yaml}" &
  pids+=($!)
  echo "kinesis: ${kinesis_endpoint}, stream jetsync-events, sink-kinesis admin http://127.0.0.1:9092 (read it back: docs/sink-kinesis.md)"
fi
