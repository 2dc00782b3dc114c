# jetsync: `make up` runs the pipeline locally (no Docker), `make test` runs every test.
SHELL := /bin/bash
MODULES := ./cmd/jetsyncctl/... ./pkg/... ./services/bridge/... ./services/sink-cache/... ./services/sink-es/... ./services/sink-kinesis/... ./services/sink-postgres/... ./tests/deploy/... ./tests/e2e/...
GO_TEST_FLAGS ?= -count=1 -timeout 25m

CLUSTER ?= 1

.PHONY: up test deps build vet smoke drills bench fuzz clean

## up: build and run NATS (embedded in the bridge), Redis, the bridge and sink-cache; Ctrl-C stops all. CLUSTER=3: NATS as a 3-node JetStream cluster (R3)
up:
	@CLUSTER=$(CLUSTER) scripts/up.sh

## test: install what the tests need (redis-server, PostgreSQL, Java 17 + Maven, Node.js + npm), vet, then run every module's tests
test: deps vet
	go test $(GO_TEST_FLAGS) $(MODULES)

## drills: the fault drills (SIGKILLs, outages, NATS restarts, duplicates) at 10x the size `make test` runs them
drills: deps
	JETSYNC_DRILL_SCALE=10 go test -count=1 -timeout 60m -v -run 'Drill|Killed|Outage' ./tests/e2e/... | grep -E '^(---|ok|FAIL)|drill|SIGKILL'

## bench: catch-up, ceilings, naive vs batched, sweep, live latency, bridge ingest for Redis (and on a 3-node R3 cluster beside one server); catch-up over the whole workload vs raw loader and naive (~5 min at 1M events), live latency for PostgreSQL; appends (bridge HTTP vs raw JetStream, 1 and 5 events, 1 and 32 clients, contended, R3; ~3 min); catch-up vs raw target and live latency for Elasticsearch and Kinesis (~9 min at 1M events, ~2.5 more for es and kinesis: they need Java 17 + Maven and Node.js + npm); see BENCHMARKS.md
bench: deps
	@mkdir -p .tmp
	go run ./bench/cmd/jetbench -n $${BENCH_N:-1000000} -o .tmp/bench.md

## fuzz: run every fuzz target (FUZZTIME=10s each; CI runs them for 3s), then schemathesis against a live bridge (1000 examples per operation)
fuzz:
	@scripts/fuzz.sh

## smoke: start `make up` in the background, append with curl, read the key from Redis, stop
smoke:
	@scripts/smoke.sh

deps:
	@scripts/deps.sh

build:
	@mkdir -p bin
	go build -o bin/ ./services/bridge ./services/sink-cache ./services/sink-es ./services/sink-kinesis ./services/sink-postgres ./cmd/jetsyncctl

vet:
	go vet $(MODULES)
	@test -z "$$(gofmt -l pkg services tests)" || { echo "gofmt would change:"; gofmt -l pkg services tests; exit 1; }

clean:
	rm -rf bin data
