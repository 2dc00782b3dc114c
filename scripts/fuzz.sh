#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 10s), then schemathesis
# against a live bridge (scripts/schemathesis.sh). The checked-in corpora
# (testdata/fuzz) also run as plain tests in `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-10s}
n=0
for dir in pkg/envelope pkg/config pkg/mapping services/sink-cache/cache; do
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //'); do
    echo "fuzz $dir $target ($t)"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$t" "./$dir" >/tmp/jetsync-fuzz.log 2>&1 || { cat /tmp/jetsync-fuzz.log; echo "fuzz: $n passed, 1 failed"; exit 1; }
    n=$((n+1))
  done
done
# The HTTP contract: schemathesis against a live bridge, 10x CI's examples.
# CI runs it at its own size right after `make test` and sets
# SKIP_SCHEMATHESIS=1 here so it does not run twice.
if [ "${SKIP_SCHEMATHESIS:-}" != 1 ]; then
  echo "fuzz schemathesis (${SCHEMATHESIS_EXAMPLES:-1000} examples per operation)"
  SCHEMATHESIS_EXAMPLES=${SCHEMATHESIS_EXAMPLES:-1000} scripts/schemathesis.sh >/tmp/jetsync-fuzz.log 2>&1 || { cat /tmp/jetsync-fuzz.log; echo "fuzz: $n passed, 1 failed"; exit 1; }
  grep -E 'generated, ' /tmp/jetsync-fuzz.log || true
  n=$((n+1))
fi
echo "fuzz: $n passed, 0 failed"
