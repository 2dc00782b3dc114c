#!/usr/bin/env bash
# Runs the jetsync pipeline on this machine without Docker: the bridge with an
# embedded NATS JetStream server (store in ./data/nats), a redis-server
# (./data/redis) and sink-cache, then each read model of scripts/up.d/
# (Elasticsearch, Kinesis, PostgreSQL). Ctrl-C stops everything cleanly.
#
# A sink its error policy stops (on_error: stop) stays up, stopped: see
# bin/jetsyncctl status, then skip or resume it. A sink that exits (crashes)
# is reported and the rest keep running; any other process exiting stops
# everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh up
mkdir -p bin data/redis data/nats
echo "building ..."
go build -o bin/ ./services/bridge ./services/sink-cache ./cmd/jetsyncctl
for d in services/sink-*/; do [ -f "$d/main.go" ] && go build -o bin/ "./$d"; done

REDIS_PORT=${REDIS_PORT:-6379}
BRIDGE_CONFIG=${BRIDGE_CONFIG:-deploy/local/bridge.yaml}
SINK_CONFIG=${SINK_CONFIG:-deploy/local/sink-cache.yaml}

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping ..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

wait_port() { # host port what
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$3 did not start listening on $1:$2; see the log above" >&2
  exit 1
}

if (exec 3<>"/dev/tcp/127.0.0.1/${REDIS_PORT}") 2>/dev/null; then
  echo "redis: using the server already listening on 127.0.0.1:${REDIS_PORT}"
else
  redis-server --bind 127.0.0.1 --port "${REDIS_PORT}" --dir "$PWD/data/redis" --appendonly yes --save "" --logfile "" &
  pids+=($!)
  wait_port 127.0.0.1 "${REDIS_PORT}" redis-server
fi

bin/bridge serve -config "${BRIDGE_CONFIG}" &
pids+=($!)
wait_port 127.0.0.1 8080 bridge

JETSYNC_REDIS_ADDR="127.0.0.1:${REDIS_PORT}" bin/sink-cache -config "${SINK_CONFIG}" &
pids+=($!)

# Further read models: each scripts/up.d/NN-name.sh starts its target and
# sink with the helpers above (wait_port, pids) and may print a hint.
for f in scripts/up.d/*.sh; do
  [ -f "$f" ] && . "$f"
done

cat <<MSG

jetsync is up: bridge http://127.0.0.1:8080 (embedded NATS on 127.0.0.1:4222), Redis 127.0.0.1:${REDIS_PORT} fed by sink-cache (admin http://127.0.0.1:9090), and the read models listed above. bin/jetsyncctl status shows them all.
Try:
  curl -s -X POST http://127.0.0.1:8080/streams/order/order-42/events \\
       -H 'Content-Type: application/json' \\
       -d '[{"id":"'\$(cat /proc/sys/kernel/random/uuid)'","type":"OrderPlaced","data":{"total":42}}]'
  redis-cli -p ${REDIS_PORT} GET order:order-42
Ctrl-C stops everything.
MSG
# Name each process by its command (sink-cache, sink-es, redis-server, ...).
declare -A names
for p in "${pids[@]}"; do names[$p]=$(ps -o comm= -p "$p" 2>/dev/null || echo "pid $p"); done
while :; do
  code=0 exited=
  wait -n -p exited "${pids[@]}" || code=$?
  name="a process"
  [ -n "${exited}" ] && name=${names[$exited]:-pid ${exited}}
  if [[ $name != sink-* ]]; then
    echo "${name} exited (code ${code}); stopping the rest" >&2
    exit 1
  fi
  echo "make up: ${name} exited with code ${code}: it crashed (a sink stopped by its error policy stays up); see its log above." >&2
  echo "make up: the rest keep running; bin/jetsyncctl status shows ${name} down. Ctrl-C stops everything." >&2
  left=()
  for p in "${pids[@]}"; do [ "$p" != "${exited}" ] && left+=("$p"); done
  pids=("${left[@]}")
  [ ${#pids[@]} -gt 0 ] || exit 1
done
