#!/usr/bin/env bash
# Installs what jetsync's tests and `make up` need on Debian/Ubuntu, or says
# exactly what is missing.
set -euo pipefail
# `deps.sh up` checks only what `make up` runs (Go, redis-server); without
# an argument, also what the tests need for Elasticsearch and Kinesis.
for_tests=true
[ "${1:-}" = up ] && for_tests=false

need_go="1.26"
if ! command -v go >/dev/null 2>&1; then
  echo "missing: Go ${need_go} or newer (https://go.dev/doc/install); then run this again" >&2
  exit 1
fi
have_go=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]; then
  echo "missing: Go ${need_go} or newer (found ${have_go})" >&2
  exit 1
fi

# ensure CMD PACKAGE: installs PACKAGE with apt-get when CMD is missing (as
# root, or with sudo), or says exactly what to install.
missing=()
ensure() {
  command -v "$1" >/dev/null 2>&1 && return 0
  missing+=("$2")
}
ensure redis-server redis-server        # the Redis sink's tests and make up
if $for_tests && [ -z "${ES_URL:-}" ]; then            # Elasticsearch 8: tests start a node from Maven Central jars
  ensure java openjdk-17-jdk-headless
  ensure javac openjdk-17-jdk-headless
  ensure mvn maven
  ensure curl curl
fi
# PostgreSQL: the tests run initdb + pg_ctl from Debian's package (its
# binaries live in /usr/lib/postgresql/*/bin, not on PATH).
if $for_tests && [ -z "${PG_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if $for_tests && [ -z "${KINESIS_ENDPOINT:-}" ]; then  # kinesalite, the Kinesis-compatible test server
  ensure node nodejs
  ensure npm npm
fi
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//')
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing with apt-get: ${pkgs} ..."
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  else
    echo "missing: ${pkgs} (Debian/Ubuntu: apt-get install -y ${pkgs})" >&2
    echo "Elasticsearch, Kinesis and PostgreSQL tests can use running servers instead: set ES_URL, KINESIS_ENDPOINT and PG_URL" >&2
    exit 1
  fi
fi
# Debian's packages start a system redis on 6379 and a system PostgreSQL
# cluster on 5432; the tests start their own on free ports and `make up`
# uses its own data dir, so they are left alone.
echo "deps ok: $(go version | cut -d' ' -f3), redis $(redis-server --version | cut -d' ' -f3 | sed 's/^v=//')${ES_URL:+, Elasticsearch at $ES_URL}${KINESIS_ENDPOINT:+, Kinesis at $KINESIS_ENDPOINT}"
