#!/usr/bin/env bash
# Installs what jetsync's tests and `make up` need on Debian/Ubuntu, or says
# exactly what is missing.
set -euo pipefail

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

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server with apt-get ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server with sudo apt-get ..."
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "missing: redis-server. Install it with: apt-get install redis-server (Debian/Ubuntu)" >&2
    exit 1
  fi
fi
# Debian's package starts a system redis on 6379; the tests start their own
# on free ports and `make up` uses its own data dir, so it is left alone.
echo "deps ok: $(go version | cut -d' ' -f3), $(redis-server --version | cut -d' ' -f3)"
