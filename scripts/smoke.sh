#!/usr/bin/env bash
# Runs `make up` in the background on spare ports, appends an event with curl
# as the README shows, waits for its key in Redis, and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
export REDIS_PORT=${REDIS_PORT:-16379}
scripts/up.sh >"$log" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 900); do   # up to 3 minutes: a first run downloads Elasticsearch's jars
  curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && grep -q "jetsync is up" "$log" && break
  kill -0 $up 2>/dev/null || { echo "make up exited early:" >&2; cat "$log" >&2; echo "smoke: 0 passed, 1 failed"; exit 1; }
  sleep 0.2
done
id=$(cat /proc/sys/kernel/random/uuid)
stream="smoke-$(date +%s%N)"
echo "POST /streams/order/${stream}/events"
curl -sf -X POST "http://127.0.0.1:8080/streams/order/${stream}/events" -H 'Content-Type: application/json' \
  -d '[{"id":"'"$id"'","type":"OrderPlaced","data":{"total":42}}]' || { cat "$log"; exit 1; }
echo
for _ in $(seq 1 100); do
  got=$(redis-cli -p "$REDIS_PORT" GET "order:${stream}")
  if [ -n "$got" ]; then
    echo "redis GET order:${stream} -> ${got}"
    echo "smoke: 1 passed, 0 failed"
    exit 0
  fi
  sleep 0.1
done
echo "the key order:${stream} never appeared in Redis; log:" >&2
cat "$log" >&2
echo "smoke: 0 passed, 1 failed"
exit 1
