# shellcheck shell=bash
# Sourced by scripts/up.sh (which has set -euo pipefail, wait_port and the
# pids array): runs PostgreSQL (data in ./data/pg) and sink-postgres.
#
#   PG_URL=postgres://user:pw@host:port/db   use that server instead
#   PG_PORT=5433                             port of the local server (5433, so
#                                            a system PostgreSQL on 5432 is left alone)
#
# sink-postgres reads deploy/local/sink-postgres.yaml: order events become
# rows of the orders table (created at start when missing). bridge relay
# reads deploy/local/relay.yaml: rows inserted into the outbox table
# (created at start when missing) are published to the stream.

pg_port=${PG_PORT:-5433}
pg_url=${PG_URL:-}
pg_ok=1

if [ -n "${pg_url}" ]; then
  echo "postgres: using PG_URL"
elif (exec 3<>"/dev/tcp/127.0.0.1/${pg_port}") 2>/dev/null; then
  pg_url="postgres://postgres@127.0.0.1:${pg_port}/postgres?sslmode=disable"
  echo "postgres: using the server already listening on 127.0.0.1:${pg_port}"
else
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "${pg_bin}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing postgresql with apt-get (for sink-postgres) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  if [ -z "${pg_bin}" ]; then
    echo "postgres: PostgreSQL is missing (apt-get install postgresql), or set PG_URL; sink-postgres is not started" >&2
    pg_ok=0
  else
    # initdb and postgres refuse to run as root: run them as the postgres
    # user (created by Debian's package), which then owns ./data/pg.
    as_pg=()
    if [ "$(id -u)" = 0 ]; then
      as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
      mkdir -p data/pg && chown postgres:postgres data/pg && chmod 700 data/pg
    else
      mkdir -p data/pg && chmod 700 data/pg
    fi
    if [ ! -f data/pg/PG_VERSION ]; then
      echo "postgres: initdb in ./data/pg ..."
      "${as_pg[@]}" "${pg_bin}/initdb" -D "$PWD/data/pg" -U postgres --auth=trust >/dev/null
    fi
    # TCP on loopback only, no Unix socket: nothing to clean up.
    "${as_pg[@]}" "${pg_bin}/postgres" -D "$PWD/data/pg" -p "${pg_port}" -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c log_min_messages=warning &
    pids+=($!)
    wait_port 127.0.0.1 "${pg_port}" postgres
    pg_url="postgres://postgres@127.0.0.1:${pg_port}/postgres?sslmode=disable"
  fi
fi

if [ "${pg_ok}" = 1 ]; then
  JETSYNC_POSTGRES_URL="${pg_url}" bin/sink-postgres -config "${PG_SINK_CONFIG:-deploy/local/sink-postgres.yaml}" &
  pids+=($!)
  JETSYNC_SOURCE_POSTGRES_URL="${pg_url}" bin/bridge relay -config "${RELAY_CONFIG:-deploy/local/relay.yaml}" &
  pids+=($!)
  echo "postgres: ${pg_url%%\?*}, sink-postgres admin http://127.0.0.1:9093; read it back:"
  echo "  psql '${pg_url}' -c 'select order_id, status, total, _position from orders'"
  echo "bridge relay: the outbox table is published to the stream (status http://127.0.0.1:9094/status); try:"
  echo "  psql '${pg_url}' -c \"insert into outbox (event_id, category, stream_id, type, data) values (gen_random_uuid(), 'order', 'order-7', 'OrderPlaced', '{\\\"total\\\":7}')\""
  echo "  redis-cli -p \${REDIS_PORT:-6379} GET order:order-7"
fi
