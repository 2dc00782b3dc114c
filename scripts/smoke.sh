#!/usr/bin/env bash
# Runs `make up` in the background on spare ports and checks it as a user
# would:
#  1. an event appended with curl (as the README shows) reaches Redis, and
#     PostgreSQL's orders and order_lines tables (sink-postgres: a row
#     mapping and a raw SQL one);
#  2. an event a sink refuses stops that sink (sink-es with a `total` that
#     is not a number, or sink-cache when Elasticsearch is not up): the sink
#     stays up, `jetsyncctl status` and /readyz say why, every other service
#     keeps running, and `jetsyncctl skip` sets it going again;
#  3. a sink that crashes is reported and the rest keep running.
# Then it stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
export REDIS_PORT=${REDIS_PORT:-16379} PG_PORT=${PG_PORT:-15433}
scripts/up.sh >"$log" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null || true; rm -f "$log"' EXIT
passed=0
fail() {
  echo "$*" >&2
  echo "make up log:" >&2
  cat "$log" >&2
  echo "smoke: ${passed} passed, 1 failed"
  exit 1
}
alive() { kill -0 $up 2>/dev/null || fail "make up exited"; }
for _ in $(seq 1 900); do   # up to 3 minutes: a first run downloads Elasticsearch's jars
  curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && grep -q "jetsync is up" "$log" && break
  kill -0 $up 2>/dev/null || fail "make up exited early"
  sleep 0.2
done

# append TYPE DATA: appends one event to a new order stream; prints the
# stream id and the event's position.
append() {
  local stream="smoke-$(date +%s%N)" id
  id=$(cat /proc/sys/kernel/random/uuid)
  local resp
  resp=$(curl -sf -X POST "http://127.0.0.1:8080/streams/order/${stream}/events" -H 'Content-Type: application/json' \
    -d '[{"id":"'"$id"'","type":"'"$1"'","data":'"$2"'}]') || fail "append $1 failed"
  echo "${stream} $(sed -E 's/.*"positions":\[([0-9]+).*/\1/' <<<"$resp")"
}
# in_redis STREAM: waits up to 10s for order:STREAM in Redis.
in_redis() {
  for _ in $(seq 1 100); do
    got=$(redis-cli -p "$REDIS_PORT" GET "order:$1")
    [ -n "$got" ] && return 0
    sleep 0.1
  done
  return 1
}
# status_of SINK: the sink's line of jetsyncctl status.
status_of() { bin/jetsyncctl status | awk -v s="$1" '$1 == s'; }

# 1. An append reaches Redis.
out=$(append OrderPlaced '{"total":42,"items":[{"sku":"SKU-1","qty":2,"price":19.5}]}') || fail "append failed"
read -r stream _ <<<"$out"
echo "POST /streams/order/${stream}/events"
in_redis "$stream" || fail "the key order:${stream} never appeared in Redis"
echo "redis GET order:${stream} -> ${got}"
passed=$((passed + 1))
if grep -q "^postgres: " "$log"; then
  pg="postgres://postgres@127.0.0.1:${PG_PORT}/postgres?sslmode=disable"
  row=
  for _ in $(seq 1 100); do
    row=$(psql "$pg" -Atc "select status || ' ' || total from orders where order_id = '${stream}'" 2>/dev/null || true)
    [ -n "$row" ] && break
    sleep 0.1
  done
  [ "$row" = "placed 42" ] || fail "orders row ${stream} in PostgreSQL is '${row}', want 'placed 42'"
  echo "psql: orders ${stream} -> ${row}"
  line=$(psql "$pg" -Atc "select line_no || ' ' || sku || ' ' || qty from order_lines where order_id = '${stream}'" 2>/dev/null || true)
  [ "$line" = "1 SKU-1 2" ] || fail "order_lines of ${stream} (raw SQL mapping) is '${line}', want '1 SKU-1 2'"
  echo "psql: order_lines ${stream} -> ${line}"
  passed=$((passed + 1))
else
  fail "make up did not start PostgreSQL and sink-postgres"
fi

# 2. A refused event stops one sink; it stays up, says why, the rest go on.
if curl -sf http://127.0.0.1:9091/healthz >/dev/null 2>&1; then
  sink=orders-es admin=http://127.0.0.1:9091 ptype=OrderPlaced pdata='{"total":"not-a-number"}'
else
  echo "sink-es is not running (no Elasticsearch): stopping sink-cache instead"
  sink=cache admin=http://127.0.0.1:9090 ptype=OrderShipped pdata='"not-an-object"'
fi
if status_of "$sink" | grep -q ' stopped '; then   # left stopped by an earlier run
  bin/jetsyncctl skip "$sink" >/dev/null
fi
out=$(append "$ptype" "$pdata") || fail "append failed"
read -r _ poison <<<"$out"
echo "appended ${ptype} ${pdata} at position ${poison}: ${sink} must stop there"
for _ in $(seq 1 150); do
  status_of "$sink" | grep -q ' stopped ' && break
  sleep 0.2
done
st=$(bin/jetsyncctl status)
echo "$st"
grep -q "^${sink} is stopped by its error policy .* at position ${poison} " <<<"$st" || fail "jetsyncctl status does not show ${sink} stopped at ${poison}"
alive
code=$(curl -s -o /tmp/smoke-readyz.$$ -w '%{http_code}' "$admin/readyz")
readyz=$(cat /tmp/smoke-readyz.$$); rm -f /tmp/smoke-readyz.$$
[ "$code" = 503 ] && grep -q "stopped by its error policy at position ${poison}" <<<"$readyz" ||
  fail "${sink} /readyz answered ${code} ${readyz}, want 503 naming position ${poison}"
curl -sf "$admin/metrics" | grep -q "^jetsync_sink_stopped_position{sink=\"${sink}\"} ${poison}\$" ||
  fail "${sink} /metrics does not show jetsync_sink_stopped_position ${poison}"
echo "${sink} /readyz: ${readyz}"
if [ "$sink" != cache ]; then
  out=$(append OrderPlaced '{"total":7}') || fail "append failed"
  read -r stream _ <<<"$out"
  in_redis "$stream" || fail "sink-cache stopped applying while ${sink} is stopped"
  echo "while ${sink} is stopped, sink-cache applied order:${stream}"
fi
bin/jetsyncctl skip "$sink" || fail "jetsyncctl skip ${sink} failed"
for _ in $(seq 1 150); do
  status_of "$sink" | grep -Eq ' (live|catching-up) ' && break
  sleep 0.2
done
status_of "$sink" | grep -Eq ' (live|catching-up) ' || fail "${sink} did not go on after skip: $(status_of "$sink")"
bin/jetsyncctl dlq list "$sink" | grep -q " ${poison} " || fail "the skipped event is not in ${sink}'s dead letters"
alive
passed=$((passed + 1))

# 3. A sink that crashes is reported; the rest keep running.
victim=$(pgrep -P $up -x sink-cache) || fail "no sink-cache process under make up"
kill -KILL "$victim"
for _ in $(seq 1 50); do
  grep -q "sink-cache exited with code" "$log" && break
  sleep 0.1
done
grep -q "sink-cache exited with code" "$log" || fail "make up did not report the crashed sink-cache"
alive
curl -sf http://127.0.0.1:8080/readyz >/dev/null || fail "the bridge is not ready after sink-cache crashed"
append OrderPlaced '{"total":1}' >/dev/null || fail "append failed after sink-cache crashed"
echo "sink-cache SIGKILLed: make up reported it and kept the rest running"
passed=$((passed + 1))

echo "smoke: ${passed} passed, 0 failed"
