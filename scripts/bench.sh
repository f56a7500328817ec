#!/usr/bin/env bash
# scripts/bench.sh (make bench) builds fbnode and fbbench, starts a fresh
# local cluster per topology and sync mode (nodes on 127.0.0.1, each node its
# own process), runs the fbbench workloads W1 W2 W3 W3S W3SC W4 (BENCH_RUNS times
# each; with BENCH_BASELINE, against a cluster of each build, alternating
# run by run), then IDLE on another fresh cluster per build, and writes into
# bench-results/<stamp>/:
#
#   results-<label>.jsonl   fbbench JSON lines (label: cluster3-fsync, os, ...)
#   scaling-<label>.jsonl   the sweeps' lines (BENCH_SCALING=1)
#   summary.md              medians table, scaling, idle cost and node RSS
#   w1-throughput.svg       W1 msgs/s per second, a line per label and run
#   w2-latency.svg          W2 send latency CDF, log-scale x
#
# fbbench gets the node PIDs (-pids) so every run line carries each node's
# RSS at the end of the run and its CPU during the run. W3, W3S and W3SC read from
# a follower (fbbench picks a node that does not lead the topic). The IDLE
# workload creates topics bench-idle-<i> up to each count of BENCH_IDLE,
# writes one message to each, waits BENCH_IDLE_SETTLE and measures the
# nodes' CPU over BENCH_IDLE_WINDOW, BENCH_RUNS times per count, the builds
# alternating (the table gives each run and their median, and names the
# cluster's topic count: the idle ones and "default").
# bench-results/ is output: do not commit it.
#
# Environment (the defaults take about 6 minutes per topology and mode, so
# about 12 minutes for make bench on 2 cores; BENCH_SCALING=1 adds about 2
# minutes per topology and mode):
#   BENCH_DURATION       -duration of the timed workloads W1, W4 (15s, as the issue specifies)
#   BENCH_RUNS           -runs of each workload (3)
#   BENCH_WORKLOADS      -workload of the main run ("all": W1,W2,W3,W3S,W3SC,W4;
#                        a baseline's own fbbench skips those it does not know)
#   BENCH_MODES          sync modes to measure ("fsync os")
#   BENCH_TOPOLOGIES     cluster shapes to measure ("cluster3"; also
#                        "single"); each needs a start_<topology> function
#   BENCH_PRODUCERS      W1 -producers (50)
#   BENCH_SENDS          W2 -sends (2000)
#   BENCH_READ_MESSAGES  W3, W3S, W3SC -read-messages (1000000)
#   BENCH_TOPICS         W4 -topics (100)
#   BENCH_IDLE          IDLE topic counts, measured on a fresh cluster of
#                        their own after the workloads ("100 1000"; the
#                        topics accumulate: the 1000 run holds the 100 of
#                        the first; empty: no IDLE)
#   BENCH_IDLE_WINDOW    IDLE CPU measuring window (20s)
#   BENCH_IDLE_SETTLE    IDLE wait after the last send before measuring (10s)
#   BENCH_SCALING        1: also run, on the same cluster, 1 run each of W1
#                        with BENCH_SCALE_PRODUCERS producers and W4 with
#                        BENCH_SCALE_TOPICS topics (0)
#   BENCH_SCALE_DURATION -duration of the sweep runs (5s)
#   BENCH_SCALE_PRODUCERS ("1 10 50 200")
#   BENCH_SCALE_TOPICS   ("10 100 1000")
#   BENCH_BASELINE       a git revision: also build fbnode at that revision,
#                        start a cluster of it beside the current build's,
#                        and alternate every run between the two (labels
#                        end in "-base"); the summary then compares them as
#                        ratios, which is how a change is judged on this
#                        noisy shared machine
#   BENCH_BASELINE_CLIENT 1: the baseline's runs use fbbench built at
#                        BENCH_BASELINE too (its client library), so that a
#                        change to the client shows in the ratios; by
#                        default both clusters get the current fbbench (0)
#   BENCH_TLS            1: this build's clusters serve TLS with client
#                        certificates required (fbnode -tls-*, certificates
#                        made with openssl under the results directory), and
#                        fbbench talks TLS to them (0)
#   BENCH_BASELINE_TLS   the same for the baseline's clusters (default:
#                        BENCH_TLS); BENCH_BASELINE=HEAD BENCH_TLS=1
#                        BENCH_BASELINE_TLS=0 measures what TLS costs
#   BENCH_ARGS           extra fbbench flags, e.g. "-size 1000 -shared-client"
#   BENCH_OUT            output directory (bench-results); results go to
#                        $BENCH_OUT/<UTC stamp>/
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DURATION=${BENCH_DURATION:-15s}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-all}
BENCH_MODES=${BENCH_MODES:-fsync os}
BENCH_TOPOLOGIES=${BENCH_TOPOLOGIES:-cluster3}
BENCH_PRODUCERS=${BENCH_PRODUCERS:-50}
BENCH_SENDS=${BENCH_SENDS:-2000}
BENCH_READ_MESSAGES=${BENCH_READ_MESSAGES:-1000000}
BENCH_TOPICS=${BENCH_TOPICS:-100}
BENCH_IDLE=${BENCH_IDLE-100 1000}
BENCH_IDLE_WINDOW=${BENCH_IDLE_WINDOW:-20s}
BENCH_IDLE_SETTLE=${BENCH_IDLE_SETTLE:-10s}
BENCH_SCALING=${BENCH_SCALING:-0}
BENCH_SCALE_DURATION=${BENCH_SCALE_DURATION:-5s}
BENCH_SCALE_PRODUCERS=${BENCH_SCALE_PRODUCERS:-1 10 50 200}
BENCH_SCALE_TOPICS=${BENCH_SCALE_TOPICS:-10 100 1000}
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_TLS=${BENCH_TLS:-0}
BENCH_BASELINE_TLS=${BENCH_BASELINE_TLS:-$BENCH_TLS}
BENCH_BASELINE=${BENCH_BASELINE:-}
BENCH_BASELINE_CLIENT=${BENCH_BASELINE_CLIENT:-0}
BENCH_OUT=${BENCH_OUT:-bench-results}

log() { echo "bench.sh: $*" >&2; }

log "building bin/fbnode and bin/fbbench"
go build -o bin/fbnode ./cmd/fbnode
go build -o bin/fbbench ./cmd/fbbench
builds=(bin/fbnode)
clients=(bin/fbbench) # the fbbench that drives each build's cluster
if [[ -n $BENCH_BASELINE ]]; then
	log "building bin/fbnode-base at $BENCH_BASELINE"
	wt=$(mktemp -d -t fbbench-base.XXXXXX)
	git worktree add -q --detach "$wt" "$BENCH_BASELINE"
	(cd "$wt" && go build -o "$OLDPWD/bin/fbnode-base" ./cmd/fbnode)
	clients+=(bin/fbbench)
	if [[ $BENCH_BASELINE_CLIENT == 1 ]]; then
		log "building bin/fbbench-base at $BENCH_BASELINE"
		(cd "$wt" && go build -o "$OLDPWD/bin/fbbench-base" ./cmd/fbbench)
		clients[1]=bin/fbbench-base
	fi
	git worktree remove --force "$wt"
	builds+=(bin/fbnode-base)
	# An older fbbench may lack flags this script passes (set -e would stop
	# the run after the first workload): find out before starting.
	if [[ $BENCH_BASELINE_CLIENT == 1 ]]; then
		help=$(bin/fbbench-base -h 2>&1 || true) # -h exits 2
		flags=(-run-number -pids -idle-settle -label)
		if [[ $BENCH_BASELINE_TLS == 1 ]]; then
			flags+=(-tls-ca)
		fi
		for flag in "${flags[@]}"; do
			if ! grep -q -- "^  $flag " <<<"$help"; then
				log "bin/fbbench-base ($BENCH_BASELINE) has no $flag flag; use a newer baseline or BENCH_BASELINE_CLIENT=0"
				exit 2
			fi
		done
	fi
elif [[ $BENCH_BASELINE_CLIENT != 0 ]]; then
	log "BENCH_BASELINE_CLIENT=$BENCH_BASELINE_CLIENT has no effect without BENCH_BASELINE"
fi

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
	"$FBNODE" -listen 127.0.0.1:0 -addr-file "$addrfile" -data "$dir/data" \
		-sync "$mode" -cluster "$cluster" -name "$name" -log-level warn "${NODE_TLS[@]}" "$@" \
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
		if bin/fbbench -forestbus "$CONN" "${CLIENT_TLS[@]}" -workload W2 -sends 1 -warmup 0 >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	log "cluster3 did not become ready"
	return 1
}

# pids_csv prints the PIDs of the running nodes, comma separated.
pids_csv() {
	local IFS=,
	echo "${NODE_PIDS[*]}"
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
dir=$BENCH_OUT/$stamp
mkdir -p "$dir"
files=()
scaling=()
started=$(date +%s)
# workload_list prints BENCH_WORKLOADS as words ("all": the six workloads).
workload_list() {
	if [[ $BENCH_WORKLOADS == all ]]; then
		echo W1 W2 W3 W3S W3SC W4
	else
		echo "${BENCH_WORKLOADS//,/ }"
	fi
}

# label_for BUILD TOPOLOGY MODE prints the label of a build's results.
label_for() {
	local label
	if [[ $2 == single ]]; then
		label=$3
	else
		label=$2-$3
	fi
	if [[ $1 == bin/fbnode-base ]]; then
		label+=-base
	fi
	echo "$label"
}

# tls_for BUILD sets NODE_TLS and CLIENT_TLS, the fbnode and fbbench flags
# of that build's clusters (BENCH_TLS, BENCH_BASELINE_TLS); the first call
# that needs them makes a CA and a certificate for 127.0.0.1, for server
# and client authentication, under $dir/tls.
NODE_TLS=()
CLIENT_TLS=()
tls_for() {
	local on=$BENCH_TLS t=$dir/tls
	if [[ $1 == bin/fbnode-base ]]; then
		on=$BENCH_BASELINE_TLS
	fi
	NODE_TLS=()
	CLIENT_TLS=()
	if [[ $on != 1 ]]; then
		return 0
	fi
	if [[ ! -s $t/node.pem ]]; then
		mkdir -p "$t"
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
			-subj "/CN=fbbench CA" -keyout "$t/ca-key.pem" -out "$t/ca.pem" 2>/dev/null
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
			-subj "/CN=fbbench node" -keyout "$t/node-key.pem" -out "$t/node.csr" 2>/dev/null
		printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
			"extendedKeyUsage=serverAuth,clientAuth" "keyUsage=digitalSignature" >"$t/ext.cnf"
		openssl x509 -req -in "$t/node.csr" -CA "$t/ca.pem" -CAkey "$t/ca-key.pem" -CAcreateserial \
			-days 2 -extfile "$t/ext.cnf" -out "$t/node.pem" 2>/dev/null
		log "TLS certificates in $t"
	fi
	NODE_TLS=(-tls-ca "$t/ca.pem" -tls-cert "$t/node.pem" -tls-key "$t/node-key.pem" -tls-client-auth)
	CLIENT_TLS=(-tls-ca "$t/ca.pem" -tls-cert "$t/node.pem" -tls-key "$t/node-key.pem")
}

# start_build starts a cluster of build $FBNODE (topology $topo, mode
# $mode) and appends its connection string to conns and its node pids to
# cpids.
start_build() {
	local n0=${#NODE_PIDS[@]}
	CONN=
	"start_$topo" "$mode"
	conns+=("$CONN")
	cpids+=("$(
		IFS=,
		echo "${NODE_PIDS[*]:n0}"
	)")
}

# knows CLIENT WORKLOAD: whether that fbbench lists the workload in its
# help (a baseline's own may be older than it). Asked once per client and
# workload.
declare -A known=()
knows() {
	local key="$1|$2" help
	if [[ -z ${known[$key]+x} ]]; then
		help=$("$1" -h 2>&1 || true)
		known[$key]=0
		if grep -qE "^  $2 " <<<"$help"; then
			known[$key]=1
		fi
	fi
	[[ ${known[$key]} == 1 ]]
}

# run_one I OUT ARGS... runs fbbench against build I's cluster (conns,
# labels and cpids are set per topology and mode below).
run_one() {
	local i=$1 out=$2
	shift 2
	# BENCH_ARGS is split into words on purpose.
	# shellcheck disable=SC2206
	local cmd=("${clients[i]}" -forestbus "${conns[i]}" -label "${labels[i]}" -pids "${cpids[i]}" ${ctls[i]} $BENCH_ARGS "$@")
	log "${cmd[*]} >> $out"
	"${cmd[@]}" >>"$out"
}

for topo in $BENCH_TOPOLOGIES; do
	if ! declare -F "start_$topo" >/dev/null; then
		log "unknown topology $topo (no start_$topo function)"
		exit 2
	fi
	for mode in $BENCH_MODES; do
		# One cluster per build, all started up front; every workload run
		# alternates between them, run by run, so that the shared machine's
		# drift hits the builds alike (an idle cluster costs ~0.3 % of a
		# core).
		conns=() cpids=() labels=() outs=() souts=() ctls=()
		for FBNODE in "${builds[@]}"; do
			label=$(label_for "$FBNODE" "$topo" "$mode")
			tls_for "$FBNODE"
			ctls+=("${CLIENT_TLS[*]}")
			start_build
			labels+=("$label")
			outs+=("$dir/results-$label.jsonl")
			souts+=("$dir/scaling-$label.jsonl")
			: >"$dir/results-$label.jsonl"
			files+=("$dir/results-$label.jsonl")
			log "$topo/$mode: $label on $CONN (nodes ${cpids[-1]})"
		done
		for w in $(workload_list); do
			for ((r = 1; r <= BENCH_RUNS; r++)); do
				for i in "${!labels[@]}"; do
					if ! knows "${clients[i]}" "$w"; then
						log "${labels[i]}: ${clients[i]} does not know $w: skipped"
						continue
					fi
					run_one "$i" "${outs[i]}" -workload "$w" -runs 1 -run-number "$r" \
						-duration "$BENCH_DURATION" -producers "$BENCH_PRODUCERS" -sends "$BENCH_SENDS" \
						-read-messages "$BENCH_READ_MESSAGES" -topics "$BENCH_TOPICS"
				done
			done
		done
		if [[ $BENCH_SCALING == 1 ]]; then
			for i in "${!labels[@]}"; do
				: >"${souts[i]}"
				scaling+=("${souts[i]}")
			done
			for p in $BENCH_SCALE_PRODUCERS; do
				for i in "${!labels[@]}"; do
					run_one "$i" "${souts[i]}" -workload W1 -producers "$p" -duration "$BENCH_SCALE_DURATION"
				done
			done
			for t in $BENCH_SCALE_TOPICS; do
				for i in "${!labels[@]}"; do
					run_one "$i" "${souts[i]}" -workload W4 -topics "$t" -duration "$BENCH_SCALE_DURATION"
				done
			done
		fi
		stop_nodes
		if [[ -n $BENCH_IDLE ]]; then
			# Idle cost on fresh clusters, one per build side by side:
			# nothing but the idle topics (and the default one) has ever run
			# on them; the builds alternate count by count.
			conns=() cpids=() ctls=()
			for FBNODE in "${builds[@]}"; do
				tls_for "$FBNODE"
				ctls+=("${CLIENT_TLS[*]}")
				start_build
			done
			for t in $BENCH_IDLE; do
				for ((r = 1; r <= BENCH_RUNS; r++)); do
					for i in "${!labels[@]}"; do
						run_one "$i" "${outs[i]}" -workload IDLE -idle-topics "$t" -runs 1 -run-number "$r" \
							-idle-settle "$BENCH_IDLE_SETTLE" -idle-window "$BENCH_IDLE_WINDOW"
					done
				done
			done
			stop_nodes
		fi
	done
done
elapsed=$(($(date +%s) - started))

log "results: ${files[*]} ${scaling[*]}"
bin/fbbench -chart -o "$dir" "${files[@]}" >/dev/null || log "no charts (they need W1 or W2 runs)"
summary=$dir/summary.md
{
	echo "# fbbench results $stamp"
	echo
	echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (modified)')${BENCH_BASELINE:+, baseline (labels ending -base) $(git rev-parse --short "$BENCH_BASELINE")$([[ $BENCH_BASELINE_CLIENT == 1 ]] && echo ' with its own fbbench' || echo ', driven by the current fbbench')},"
	echo "$(nproc) cores, $(uname -sr); topologies: $BENCH_TOPOLOGIES; modes: $BENCH_MODES;"
	echo "$BENCH_RUNS runs of $BENCH_DURATION (W1, W4); the whole script took ${elapsed}s."
	if [[ $BENCH_TLS == 1 || $BENCH_BASELINE_TLS == 1 ]]; then
		echo "TLS (client certificates required): current build $([[ $BENCH_TLS == 1 ]] && echo on || echo off)${BENCH_BASELINE:+, baseline $([[ $BENCH_BASELINE_TLS == 1 ]] && echo on || echo off)}."
	fi
	echo
	echo "## Medians of $BENCH_RUNS runs"
	echo
	echo "Latency per batch for W1/W4, per send for W2, per GetMessages call for W3,"
	echo "per 1000 delivered messages for W3S and W3SC (fbbench samples every 1000; a stream response holds up to 4096). W3, W3S and W3SC read from a"
	echo "follower. W3S subscribes WithBorrowedMessages (its fn keeps nothing); W3SC does not (a new buffer"
	echo "per response, which fn's messages could keep)."
	echo
	bin/fbbench -report "${files[@]}" || echo "(no workload runs: BENCH_WORKLOADS was empty)"
	if [[ -n $BENCH_BASELINE ]]; then
		echo
		echo "## Against the baseline (same run; medians of the runs, current vs baseline, and their ratio)"
		echo
		python3 - "${files[@]}" <<'PY'
import json, statistics, sys
runs = {}
for f in sys.argv[1:]:
    for line in open(f):
        r = json.loads(line)
        if r.get("type") == "run" and r.get("workload") != "IDLE" and "latency" in r:
            runs.setdefault((r["workload"], r.get("label", "")), []).append(r)
def med(rs, k):
    vals = [r["msgs_per_s"] if k == "msgs_per_s" else r["latency"][k] for r in rs]
    return statistics.median(vals)
print("| workload | label | msgs/s | ratio | p50 ms | ratio | p99 ms | ratio |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for (w, label), rs in sorted(runs.items()):
    bs = runs.get((w, label + "-base"))
    if label.endswith("-base") or not bs:
        continue
    cells = []
    for k in ("msgs_per_s", "p50_ms", "p99_ms"):
        m, b = med(rs, k), med(bs, k)
        fmt = "%.0f vs %.0f" if k == "msgs_per_s" else "%.2f vs %.2f"
        cells += [fmt % (m, b), "%.2f" % (m / b) if b else "–"]
    print("| %s | %s | %s |" % (w, label, " | ".join(cells)))
PY
	fi
	if ((${#scaling[@]})); then
		echo
		echo "## Scaling (1 run of $BENCH_SCALE_DURATION each)"
		echo
		bin/fbbench -report -report-kind scaling "${scaling[@]}"
	fi
	echo
	echo "## Idle cost (CPU of the node processes from /proc, 100 ticks/s)"
	echo
	bin/fbbench -report -report-kind idle "${files[@]}" "${scaling[@]}" || echo "(no IDLE runs)"
	echo
	echo "## Node RSS and CPU per workload (VmRSS at the end of each run)"
	echo
	bin/fbbench -report -report-kind rss "${files[@]}" "${scaling[@]}" || echo "(no runs with -pids)"
	echo
	echo "## Read node (W3, W3S, W3SC)"
	echo
	for f in "${files[@]}"; do
		grep -h '"workload":"W3' "$f" | grep '"type":"run"' | head -n1 |
			python3 -c 'import json,sys
for l in sys.stdin:
    r=json.loads(l); n=r.get("read_node") or {}
    print("- %s: node %s %s (%s), topic leader %s%s" % (r.get("label"), n.get("index"), n.get("address"), n.get("name"), n.get("leader"), " (reads from the leader)" if n.get("is_leader") else ""))' || true
	done
	echo
	echo "Charts: w1-throughput.svg, w2-latency.svg"
} >"$summary"

echo
cat "$summary"
echo
log "wrote $dir: summary.md, w1-throughput.svg, w2-latency.svg, $(cd "$dir" && ls ./*.jsonl | tr '\n' ' ')"
