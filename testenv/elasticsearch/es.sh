#!/usr/bin/env bash
# A real Elasticsearch 8 node in one JVM for jetsync's tests (no Docker).
#
#   es.sh classpath            resolve the jars once (Maven), compile the
#                              launcher once (javac); print the classpath file
#   es.sh start PORT DATA_DIR  start a node on 127.0.0.1:PORT with its data,
#                              log (es.log) and pid file (es.pid) in DATA_DIR;
#                              wait until it answers; the last line printed
#                              is its URL
#   es.sh stop DATA_DIR        stop the node started on DATA_DIR
#
# Needs Java 17+, Maven 3.8+ and curl (Debian: apt-get install -y
# openjdk-17-jdk-headless maven curl). The jars come from Maven Central into
# ~/.m2; the classpath and compiled launcher are cached in .cache/ here.
#
# Environment:
#   ES_JAVA_OPTS       JVM options (default: -Xms512m -Xmx1g)
#   ES_START_TIMEOUT   seconds to wait for the node (default: 180)
#   ES_OWNER_PID       the node shuts itself down when this process is gone
#   ES_DELETE_HOME_ON_EXIT=1  ... and then deletes DATA_DIR
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$here/.cache"
cp_file="$cache/classpath.txt"
classes="$cache/classes"
src="$here/src/org/elasticsearch/plugins/JetsyncTestNode.java"
main_class=org.elasticsearch.plugins.JetsyncTestNode

die() { echo "es.sh: $*" >&2; exit 1; }

need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

# jars_present reports whether every jar of the cached classpath is still in
# the local Maven repository (it may have been wiped since).
jars_present() {
	local jar
	IFS=: read -r -a jars <"$cp_file"
	for jar in "${jars[@]}"; do
		[[ -f "$jar" ]] || return 1
	done
}

# ensure_built resolves the classpath (once per pom.xml change) and compiles
# the launcher (once per source or classpath change), under a lock so that
# test binaries running in parallel do it once.
ensure_built() {
	mkdir -p "$cache"
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$cache/.lock"
		flock 9
	fi
	if [[ ! -s "$cp_file" || "$here/pom.xml" -nt "$cp_file" ]] || ! jars_present; then
		need java "install Java 17+ (apt-get install -y openjdk-17-jdk-headless)"
		need mvn "install Maven 3.8+ (apt-get install -y maven)"
		echo "es.sh: resolving Elasticsearch jars with Maven (the first run downloads ~45 MB into ~/.m2)..." >&2
		local tmp="$cp_file.tmp.$$"
		local out
		if ! out="$(mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:build-classpath -Dmdep.outputFile="$tmp" 2>&1)"; then
			rm -f "$tmp"
			echo "$out" >&2
			die "mvn dependency:build-classpath failed (is Maven Central reachable?)"
		fi
		mv "$tmp" "$cp_file"
	fi
	if [[ ! -f "$classes/.stamp" || "$src" -nt "$classes/.stamp" || "$cp_file" -nt "$classes/.stamp" ]]; then
		need javac "install a Java 17+ JDK (apt-get install -y openjdk-17-jdk-headless)"
		rm -rf "$classes"
		mkdir -p "$classes"
		javac -nowarn -d "$classes" -cp "$(cat "$cp_file")" "$src" >&2 || die "compiling $src failed"
		touch "$classes/.stamp"
	fi
	if command -v flock >/dev/null 2>&1; then
		exec 9>&-
	fi
}

# root_json PORT prints the body of GET / or fails.
root_json() {
	curl -fsS -m 2 "http://127.0.0.1:$1/" 2>/dev/null
}

cmd_classpath() {
	ensure_built
	echo "$cp_file"
}

cmd_start() {
	[[ $# -eq 2 ]] || die "usage: es.sh start PORT DATA_DIR"
	local port="$1" data="$2"
	[[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
	need java "install Java 17+ (apt-get install -y openjdk-17-jdk-headless)"
	need curl "install curl (apt-get install -y curl)"
	ensure_built
	mkdir -p "$data"
	data="$(cd "$data" && pwd)"
	local pid_file="$data/es.pid" log="$data/es.log"
	if [[ -s "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
		die "a node is already running on $data (pid $(cat "$pid_file"))"
	fi
	if root_json "$port" >/dev/null; then
		die "something already answers on 127.0.0.1:$port"
	fi

	local t0=$SECONDS
	# shellcheck disable=SC2086 # ES_JAVA_OPTS is a list of options
	nohup java ${ES_JAVA_OPTS:--Xms512m -Xmx1g} \
		-Dfile.encoding=UTF-8 \
		-Djava.locale.providers=SPI,COMPAT \
		-Dio.netty.noUnsafe=true \
		-Dio.netty.noKeySetOptimization=true \
		-Dio.netty.recycler.maxCapacityPerThread=0 \
		-Dlog4j.shutdownHookEnabled=false \
		-Dlog4j2.disable.jmx=true \
		-Dlog4j2.formatMsgNoLookups=true \
		-XX:-OmitStackTraceInFastThrow \
		-cp "$classes:$(cat "$cp_file")" "$main_class" "$port" "$data" \
		>>"$log" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$pid_file"

	local deadline=$((SECONDS + ${ES_START_TIMEOUT:-180})) body=""
	while :; do
		if ! kill -0 "$pid" 2>/dev/null; then
			rm -f "$pid_file"
			echo "es.sh: the node exited during startup; the end of $log:" >&2
			tail -n 40 "$log" >&2 || true
			exit 1
		fi
		if body="$(root_json "$port")"; then
			break
		fi
		if ((SECONDS >= deadline)); then
			kill "$pid" 2>/dev/null || true
			rm -f "$pid_file"
			echo "es.sh: no answer on 127.0.0.1:$port within ${ES_START_TIMEOUT:-180}s; the end of $log:" >&2
			tail -n 40 "$log" >&2 || true
			exit 1
		fi
		sleep 0.2
	done
	local version
	version="$(printf '%s' "$body" | tr -d '\n' | sed -n 's/.*"number"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')"
	if [[ "$version" != 8.* ]]; then
		kill "$pid" 2>/dev/null || true
		rm -f "$pid_file"
		die "GET / on 127.0.0.1:$port answered without an 8.x version.number: $body"
	fi
	# After a restart the existing indices recover asynchronously: wait until
	# every primary shard is up, as a client would after an outage.
	curl -fsS -m 65 "http://127.0.0.1:$port/_cluster/health?wait_for_status=yellow&timeout=60s" >/dev/null ||
		echo "es.sh: warning: cluster health did not reach yellow within 60s" >&2
	echo "elasticsearch $version ready in $((SECONDS - t0))s (pid $pid, log $log)"
	echo "http://127.0.0.1:$port"
}

cmd_stop() {
	[[ $# -eq 1 ]] || die "usage: es.sh stop DATA_DIR"
	local pid_file="$1/es.pid"
	[[ -s "$pid_file" ]] || { echo "es.sh: no pid file in $1, nothing to stop" >&2; return 0; }
	local pid
	pid="$(cat "$pid_file")"
	if kill -TERM "$pid" 2>/dev/null; then
		# The node closes its indices cleanly on SIGTERM.
		for _ in $(seq 1 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "es.sh: pid $pid still running after 30s, killing it" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$pid_file"
}

case "${1:-}" in
classpath) shift; cmd_classpath "$@" ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
*) die "usage: es.sh classpath | start PORT DATA_DIR | stop DATA_DIR" ;;
esac
