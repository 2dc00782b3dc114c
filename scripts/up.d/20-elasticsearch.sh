# shellcheck shell=bash
# Sourced by scripts/up.sh (which has set -euo pipefail, wait_port and the
# pids array): runs an Elasticsearch node and sink-es.
#
#   ES_URL=http://host:9200   use that Elasticsearch 8 instead of starting one
#   ES_PORT=9200              port of the local node (data in ./data/es)
#
# The local node is the one the tests use (testenv/elasticsearch/es.sh:
# Elasticsearch 8.7.1 core from Elastic's jars, security off; it needs Java
# 17+, Maven and curl, installed with apt-get when run as root). It stops
# with `make up`. sink-es reads deploy/local/sink-es.yaml: every order event
# goes to the alias "orders" (docs/sink-es.md).

es_port=${ES_PORT:-9200}
es_url=${ES_URL:-}
es_ok=1

if [ -n "${es_url}" ]; then
  echo "elasticsearch: using ES_URL=${es_url}"
elif (exec 3<>"/dev/tcp/127.0.0.1/${es_port}") 2>/dev/null; then
  es_url="http://127.0.0.1:${es_port}"
  echo "elasticsearch: using the server already listening on 127.0.0.1:${es_port}"
else
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing Java, Maven and curl with apt-get (for the local Elasticsearch) ..."
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven curl >/dev/null
    fi
  fi
  mkdir -p data/es
  if es_out=$(ES_OWNER_PID=$$ testenv/elasticsearch/es.sh start "${es_port}" "$PWD/data/es"); then
    es_url=$(printf '%s\n' "${es_out}" | tail -n 1)
    printf '%s\n' "${es_out}" | head -n 1
    # Stop the node when make up stops (cleanup sends TERM to every pid;
    # the node also stops by itself once this shell is gone).
    ( trap 'kill "${s:-}" 2>/dev/null; testenv/elasticsearch/es.sh stop "$PWD/data/es"; exit 0' TERM INT
      while :; do sleep 3600 & s=$!; wait "$s"; done ) &
    pids+=($!)
  else
    echo "elasticsearch: could not start a local node (see above; it needs Java 17+, Maven and curl), or set ES_URL; sink-es is not started" >&2
    es_ok=0
  fi
fi

if [ "${es_ok}" = 1 ]; then
  JETSYNC_ELASTICSEARCH_URLS="${es_url}" bin/sink-es -config "${ES_SINK_CONFIG:-deploy/local/sink-es.yaml}" &
  pids+=($!)
  echo "elasticsearch: ${es_url}, sink-es admin http://127.0.0.1:9091; read it back: curl -s '${es_url}/orders/_doc/order-42?pretty'"
fi
