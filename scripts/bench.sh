#!/usr/bin/env bash
# scripts/bench.sh builds fbnode and fbbench, runs every fbbench workload
# against a fresh cluster in each sync mode, writes the JSON lines to
# bench-results/<timestamp>-<mode>.jsonl and prints a markdown table of the
# medians. bench-results/ is output: do not commit it.
#
# Environment (defaults keep the whole run near 3 minutes on 2 cores):
#   BENCH_DURATION       -duration of the timed workloads W1, W4 (10s)
#   BENCH_RUNS           -runs of each workload (3)
#   BENCH_MODES          sync modes to measure ("fsync os")
#   BENCH_TOPOLOGIES     cluster shapes to measure ("single"); each needs a
#                        start_<topology> function below
#   BENCH_PRODUCERS      W1 -producers (50)
#   BENCH_SENDS          W2 -sends (2000)
#   BENCH_READ_MESSAGES  W3 -read-messages (1000000)
#   BENCH_TOPICS         W4 -topics (100)
#   BENCH_ARGS           extra fbbench flags, e.g. "-size 1000 -shared-client"
#   BENCH_OUT            output directory (bench-results)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DURATION=${BENCH_DURATION:-10s}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_MODES=${BENCH_MODES:-fsync os}
BENCH_TOPOLOGIES=${BENCH_TOPOLOGIES:-single}
BENCH_PRODUCERS=${BENCH_PRODUCERS:-50}
BENCH_SENDS=${BENCH_SENDS:-2000}
BENCH_READ_MESSAGES=${BENCH_READ_MESSAGES:-1000000}
BENCH_TOPICS=${BENCH_TOPICS:-100}
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_OUT=${BENCH_OUT:-bench-results}

log() { echo "bench.sh: $*" >&2; }

log "building bin/fbnode and bin/fbbench"
go build -o bin/fbnode ./cmd/fbnode
go build -o bin/fbbench ./cmd/fbbench

# Nodes started and their temporary directories, cleaned up on exit.
NODE_PIDS=()
NODE_DIRS=()

stop_nodes() {
	local pid
	for pid in "${NODE_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${NODE_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if ((${#NODE_DIRS[@]})); then
		rm -rf "${NODE_DIRS[@]}"
	fi
	NODE_PIDS=()
	NODE_DIRS=()
}
trap stop_nodes EXIT
trap 'exit 130' INT TERM

# start_node MODE CLUSTER NAME [fbnode flags...] starts one node on a free
# port with a fresh data directory and sets ADDR to the address it listens
# on. (Not called in $(...): the subshell would lose NODE_PIDS.)
start_node() {
	local mode=$1 cluster=$2 name=$3
	shift 3
	local dir addrfile pid i
	dir=$(mktemp -d -t fbbench-node.XXXXXX)
	NODE_DIRS+=("$dir")
	addrfile=$dir/addr
	# A later -listen in "$@" overrides this one.
	bin/fbnode -listen 127.0.0.1:0 -addr-file "$addrfile" -data "$dir/data" \
		-sync "$mode" -cluster "$cluster" -name "$name" -log-level warn "$@" \
		>"$dir/node.log" 2>&1 &
	pid=$!
	NODE_PIDS+=("$pid")
	# The node writes "host:port\n" once ready; wait for the newline.
	for ((i = 0; i < 300; i++)); do
		if [[ -s $addrfile && $(tail -c1 "$addrfile" | wc -l) -eq 1 ]]; then
			ADDR=$(head -n1 "$addrfile")
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			log "node $name exited early:"
			cat "$dir/node.log" >&2
			return 1
		fi
		sleep 0.1
	done
	log "node $name not ready after 30s:"
	cat "$dir/node.log" >&2
	return 1
}

# start_<topology> MODE starts a fresh cluster and sets CONN to its
# connection string (cluster#topic@nodes). BENCH_TOPOLOGIES="single cluster3"
# measures both.
start_single() {
	start_node "$1" bench node1
	CONN="bench#default@$ADDR"
}

# free_ports N prints N free loopback ports (picked by the kernel).
free_ports() {
	python3 -c 'import socket,sys
socks=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# start_cluster3 MODE: three nodes, one process each, on 127.0.0.1.
start_cluster3() {
	local ports p ic="" i=1 nodes=""
	read -r -a ports <<<"$(free_ports 3)"
	for p in "${ports[@]}"; do
		ic+="${ic:+,}n$i=127.0.0.1:$p"
		i=$((i + 1))
	done
	i=1
	for p in "${ports[@]}"; do
		start_node "$1" bench "n$i" -initial-cluster "$ic" -listen "127.0.0.1:$p"
		nodes+="${nodes:+,}127.0.0.1:$p"
		i=$((i + 1))
	done
	CONN="bench#default@$nodes"
	# Wait until the cluster has created its default topic.
	for ((i = 0; i < 300; i++)); do
		if bin/fbbench -forestbus "$CONN" -workload W2 -sends 1 -warmup 0 >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	log "cluster3 did not become ready"
	return 1
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$BENCH_OUT"
files=()
for topo in $BENCH_TOPOLOGIES; do
	if ! declare -F "start_$topo" >/dev/null; then
		log "unknown topology $topo (no start_$topo function)"
		exit 2
	fi
	for mode in $BENCH_MODES; do
		if [[ $topo == single ]]; then
			label=$mode
		else
			label=$topo-$mode
		fi
		out=$BENCH_OUT/$stamp-$label.jsonl
		CONN=
		"start_$topo" "$mode"
		# BENCH_ARGS is split into words on purpose.
		# shellcheck disable=SC2206
		cmd=(bin/fbbench -forestbus "$CONN" -workload all -runs "$BENCH_RUNS"
			-duration "$BENCH_DURATION" -producers "$BENCH_PRODUCERS" -sends "$BENCH_SENDS"
			-read-messages "$BENCH_READ_MESSAGES" -topics "$BENCH_TOPICS" -label "$label" $BENCH_ARGS)
		log "$topo/$mode: ${cmd[*]} > $out"
		"${cmd[@]}" >"$out"
		stop_nodes
		files+=("$out")
	done
done

log "results: ${files[*]}"
echo
echo "Medians of $BENCH_RUNS runs (duration $BENCH_DURATION; latency per batch for W1/W4, per send for W2, per GetMessages call for W3):"
echo
bin/fbbench -report "${files[@]}"
