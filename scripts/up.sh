#!/usr/bin/env bash
# Runs the jetsync pipeline on this machine without Docker: the bridge with an
# embedded NATS JetStream server (store in ./data/nats), a redis-server
# (./data/redis) and sink-cache, then each read model of scripts/up.d/
# (Elasticsearch, Kinesis, PostgreSQL). Ctrl-C stops everything cleanly.
#
# CLUSTER=3 (make up CLUSTER=3) runs NATS as a 3-node JetStream cluster
# instead: three `bridge nats` processes (client ports 4222-4224, routes
# 6222-6224, stores in ./data/cluster/nK), the bridge given every node with
# stream.replicas 3, and every sink given every node (JETSYNC_NATS_URL).
# Kill one node (see the pids printed) and the pipeline rides through.
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
CLUSTER=${CLUSTER:-1}
BRIDGE_CONFIG=${BRIDGE_CONFIG:-deploy/local/bridge.yaml}
SINK_CONFIG=${SINK_CONFIG:-deploy/local/sink-cache.yaml}

pids=()
declare -A nats_nodes # pid -> node number (CLUSTER > 1)
cleanup() {
  trap - INT TERM EXIT
  echo "stopping ..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

wait_port() { # host port what [tenths of a second, 100 by default]
  for _ in $(seq 1 "${4:-100}"); do
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

nats_where="embedded NATS on 127.0.0.1:4222"
if [ "${CLUSTER}" -gt 1 ]; then
  [ "${CLUSTER}" -ge 3 ] && [ "${CLUSTER}" -le 5 ] || { echo "CLUSTER must be 1 (embedded NATS) or 3 to 5 nodes, got ${CLUSTER}" >&2; exit 2; }
  routes="" urls=""
  for n in $(seq 1 "${CLUSTER}"); do
    routes+="${routes:+, }nats-route://127.0.0.1:$((6221 + n))"
    urls+="${urls:+,}nats://127.0.0.1:$((4221 + n))"
  done
  mkdir -p data/cluster
  for n in $(seq 1 "${CLUSTER}"); do
    cat >"data/cluster/n${n}.yaml" <<YAML
# written by scripts/up.sh (make up CLUSTER=${CLUSTER}): node ${n} of the local JetStream cluster
nats:
  embedded:
    host: 127.0.0.1
    port: $((4221 + n))
    store_dir: ./data/cluster/n${n}
    server_name: nats-${n}
    cluster: {name: jetsync-local, listen: "127.0.0.1:$((6221 + n))", routes: [${routes}]}
YAML
    bin/bridge nats -config "data/cluster/n${n}.yaml" &
    pids+=($!)
    nats_nodes[$!]=${n}
    echo "nats-${n}: pid $! (client 127.0.0.1:$((4221 + n)))"
  done
  for n in $(seq 1 "${CLUSTER}"); do wait_port 127.0.0.1 $((4221 + n)) "nats-${n}"; done
  replicas=3
  # Every sink, and jetsyncctl, reach the cluster through all its nodes.
  export JETSYNC_NATS_URL="${urls}"
  JETSYNC_STREAM_REPLICAS=${replicas} bin/bridge serve -config "${BRIDGE_CONFIG}" &
  nats_where="a ${CLUSTER}-node NATS cluster on ${urls}, streams R${replicas}"
else
  bin/bridge serve -config "${BRIDGE_CONFIG}" &
fi
pids+=($!)
wait_port 127.0.0.1 8080 bridge 600 # on a new cluster, once JetStream has elected its leaders

JETSYNC_REDIS_ADDR="127.0.0.1:${REDIS_PORT}" bin/sink-cache -config "${SINK_CONFIG}" &
pids+=($!)

# Further read models: each scripts/up.d/NN-name.sh starts its target and
# sink with the helpers above (wait_port, pids) and may print a hint.
for f in scripts/up.d/*.sh; do
  [ -f "$f" ] && . "$f"
done

cat <<MSG

jetsync is up: bridge http://127.0.0.1:8080 (${nats_where}), Redis 127.0.0.1:${REDIS_PORT} fed by sink-cache (admin http://127.0.0.1:9090), and the read models listed above. bin/jetsyncctl status shows them all.
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
  if [ -n "${exited}" ] && [ -n "${nats_nodes[$exited]:-}" ]; then
    n=${nats_nodes[$exited]}
    echo "make up: nats-${n} exited (code ${code}); the cluster rides through on the other nodes. Start it again with: bin/bridge nats -config data/cluster/n${n}.yaml &" >&2
  elif [[ $name != sink-* ]]; then
    echo "${name} exited (code ${code}); stopping the rest" >&2
    exit 1
  else
    echo "make up: ${name} exited with code ${code}: it crashed (a sink stopped by its error policy stays up); see its log above." >&2
    echo "make up: the rest keep running; bin/jetsyncctl status shows ${name} down. Ctrl-C stops everything." >&2
  fi
  left=()
  for p in "${pids[@]}"; do [ "$p" != "${exited}" ] && left+=("$p"); done
  pids=("${left[@]}")
  [ ${#pids[@]} -gt 0 ] || exit 1
done
