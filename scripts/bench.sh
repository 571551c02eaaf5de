#!/usr/bin/env bash
# The benchmark of issue 5 ("Performance"), on loopback, in one invocation. Each round runs
# the churn workload (bench/src/bin/churn.rs) three ways, in a rotating order:
#   a  nothing attached
#   b  libbpf-tools tcplife attached, its output sent to /dev/null
#   c  otel-agent attached, exporting every span over OTLP/gRPC to a local collector
#      (rotel with its blackhole exporter, or the counting receiver `otlp-sink`)
# and reports the medians, the rate ratios b/a and c/a, the session accounting (kernel ->
# ring buffer -> export queue -> collector), the probes' kernel cost per tracepoint hit
# (kernel.bpf_stats_enabled, run_time_ns / run_cnt), the agent's CPU seconds per 10,000
# sessions and its peak RSS. PERFORMANCE.md describes the figures.
#
# Settings (environment):
#   ROUNDS=5            rounds of (a, b, c), in rotating order
#   MODES=abc           which of the modes a, b, c to run (e.g. MODES=c to measure only the
#                       agent's kernel cost when comparing builds; the ratios need a)
#   DURATION=10s        churn duration per run (the churn also stops at MAX_CONNECTIONS)
#   MAX_CONNECTIONS=2000000
#   CHURN_THREADS=8     client threads (and as many server threads)
#   COLLECTOR=rotel     rotel | sink (the counting receiver in bench/)
#   BPF_STATS=1         enable kernel.bpf_stats_enabled during b and c (restored after)
#   AGENT_ARGS=         extra flags for otel-agent
#   SAMPLER_RATIO=      the sampled run (issue 15): the agent samples with
#                       OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=<this>, e.g.
#                       0.1 (its session metrics still count every session); unset: every span
#   AGENT=target/release/otel-agent   the agent binary (to compare builds; SKIP_BUILD=1)
#   OUT_DIR=            where logs and results go (default: a new /tmp/otel-agent-bench.*)
#   SKIP_SETUP=0 SKIP_BUILD=0
#
# Needs root (it loads eBPF programs and changes sysctls, which it restores). Every process
# it starts is stopped by its pid; every sysctl it changes is restored on exit, Ctrl-C
# included. Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

ROUNDS="${ROUNDS:-5}"
MODES="${MODES:-abc}"
DURATION="${DURATION:-10s}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-2000000}"
CHURN_THREADS="${CHURN_THREADS:-8}"
COLLECTOR="${COLLECTOR:-rotel}"
BPF_STATS="${BPF_STATS:-1}"
AGENT_ARGS="${AGENT_ARGS:-}"
SAMPLER_RATIO="${SAMPLER_RATIO:-}"
SKIP_SETUP="${SKIP_SETUP:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"

TCPLIFE=/usr/sbin/tcplife
AGENT="${AGENT:-target/release/otel-agent}"
CHURN=target/release/churn
SINK=target/release/otlp-sink
REPORT=scripts/bench_report.py

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root: it loads eBPF programs (tcplife, otel-agent), changes sysctls (restored on exit) and reads kernel.bpf_stats; run: sudo $0"
case "$COLLECTOR" in rotel | sink) ;; *) die "COLLECTOR=$COLLECTOR: use rotel or sink" ;; esac
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS=$ROUNDS: use a positive integer"
[[ "$MODES" =~ ^[abc]+$ ]] || die "MODES=$MODES: use one or more of a, b, c (e.g. MODES=c)"
[[ -z "$SAMPLER_RATIO" || "$SAMPLER_RATIO" =~ ^(0(\.[0-9]+)?|1(\.0*)?)$ ]] \
    || die "SAMPLER_RATIO=$SAMPLER_RATIO: use a ratio from 0 to 1, like 0.1"
# The sampler's variables for the agent (none: every span).
SAMPLER_ENV=()
if [ -n "$SAMPLER_RATIO" ]; then
    SAMPLER_ENV=(OTEL_TRACES_SAMPLER=traceidratio "OTEL_TRACES_SAMPLER_ARG=$SAMPLER_RATIO")
fi

OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/otel-agent-bench.XXXXXX)}"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.txt"
: >"$RESULTS"

# --- cleanup: stop what we started (by pid), restore what we changed ---------------------
STARTED_PIDS=()
BPF_STATS_ORIGINAL="$(cat /proc/sys/kernel/bpf_stats_enabled)"
cleanup() {
    # Only pids this script started and still has as running jobs (never a reused pid).
    local pid running
    running=" $(jobs -pr | tr '\n' ' ') "
    for pid in "${STARTED_PIDS[@]}"; do
        if [[ "$running" == *" $pid "* ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    echo "$BPF_STATS_ORIGINAL" >/proc/sys/kernel/bpf_stats_enabled || \
        say "could not restore kernel.bpf_stats_enabled; run: sysctl -w kernel.bpf_stats_enabled=$BPF_STATS_ORIGINAL"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# --- setup and build ---------------------------------------------------------------------
if [ "$SKIP_SETUP" != 1 ]; then
    scripts/setup.sh bench
fi
if [ "$SKIP_BUILD" != 1 ]; then
    say "building the agent and the harness (release)"
    # Two builds: one build of both would unify their dependencies' features (the harness's
    # gRPC server), and the agent measured would not be the agent shipped.
    cargo build --release --locked -p otel-agent
    cargo build --release --locked -p otel-agent-bench
fi
for binary in "$AGENT" "$CHURN" "$SINK" "$TCPLIFE"; do
    [ -x "$binary" ] || die "$binary is missing (run without SKIP_BUILD/SKIP_SETUP)"
done
command -v bpftool >/dev/null || die "bpftool is missing; run scripts/setup.sh bench"

# --- helpers -----------------------------------------------------------------------------
stats_on() { [ "$BPF_STATS" = 1 ] && echo 1 >/proc/sys/kernel/bpf_stats_enabled || true; }
stats_off() { echo "$BPF_STATS_ORIGINAL" >/proc/sys/kernel/bpf_stats_enabled; }

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, counted
# after the parenthesised comm, which may contain spaces).
cpu_ticks() {
    local stat rest fields
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    read -ra fields <<<"$rest"
    echo $((fields[11] + fields[12]))
}

# VmHWM (peak resident set) of a process, kB.
peak_rss_kb() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}

# Processes other than ours holding BPF programs during a run (their probes would add
# their cost to it): writes them to foreign.MODE.ROUND.txt and prints "foreign_bpf=N".
foreign_bpf() {
    local file="$OUT_DIR/foreign.$1.$2.txt"
    shift 2
    python3 "$REPORT" foreign "$@" >"$file"
    echo "foreign_bpf=$(grep -c . "$file" || true)"
}

# Runs the churn workload; prints its summary line.
churn() {
    local log="$1" out
    out="$("$CHURN" --threads "$CHURN_THREADS" --duration "$DURATION" \
        --max-connections "$MAX_CONNECTIONS" 2>>"$log")" \
        || die "the churn workload failed: $(tail -n 3 "$log")"
    tail -n 1 <<<"$out"
}

# Waits until PID holds a BPF program (it attached), or fails after 30 s.
wait_for_bpf_progs() {
    local pid="$1" name="$2" deadline=$((SECONDS + 30))
    local held
    while held="$(python3 "$REPORT" progs "$pid")"; ! grep -q '^prog ' <<<"$held"; do
        kill -0 "$pid" 2>/dev/null || die "$name exited before attaching (see $OUT_DIR)"
        [ "$SECONDS" -lt "$deadline" ] || die "$name did not attach within 30 s (see $OUT_DIR)"
        sleep 0.1
    done
}

# Sends SIGINT to PID and samples its CPU time and peak RSS until it exits (the last
# sample is taken at most 20 ms before the exit). Sets STOP_TICKS, STOP_HWM_KB and
# STOP_RC (not run in a subshell: only this shell can wait for its children).
stop_and_sample() {
    local pid="$1" ticks="" hwm="" t h deadline=$((SECONDS + 30))
    kill -INT "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        t="$(cpu_ticks "$pid" || true)"
        h="$(peak_rss_kb "$pid" || true)"
        [ -n "$t" ] && ticks="$t"
        [ -n "$h" ] && hwm="$h"
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "pid $pid did not stop within 30 s of SIGINT; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.02
    done
    STOP_RC=0
    wait "$pid" || STOP_RC=$?
    STOP_TICKS="${ticks:-0}"
    STOP_HWM_KB="${hwm:-0}"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listening() {
    local port="$1" pid="$2" deadline=$((SECONDS + 20))
    until ss -Hltn "sport = :$port" | grep -q .; do
        kill -0 "$pid" 2>/dev/null || die "the collector exited at start (see $OUT_DIR)"
        [ "$SECONDS" -lt "$deadline" ] || die "the collector is not listening on $port after 20 s"
        sleep 0.1
    done
}

# Starts the collector; sets COLLECTOR_PID and COLLECTOR_PORT.
start_collector() {
    local round="$1"
    COLLECTOR_PORT="$(free_port)"
    if [ "$COLLECTOR" = rotel ]; then
        local rotel http_port
        rotel="$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
        http_port="$(free_port)"
        # Basic trace debug logging prints one "Received traces ... spans=N" line per request
        # received: what rotel received, without printing each span.
        NO_COLOR=1 "$rotel" start --otlp-grpc-endpoint "127.0.0.1:$COLLECTOR_PORT" \
            --otlp-http-endpoint "127.0.0.1:$http_port" --exporter blackhole \
            --debug-log traces --debug-log-verbosity basic \
            --pid-file "$OUT_DIR/rotel.$round.pid" --log-file "$OUT_DIR/rotel.$round.log" \
            >"$OUT_DIR/collector.$round.out" 2>&1 &
    else
        "$SINK" --listen "127.0.0.1:$COLLECTOR_PORT" >"$OUT_DIR/collector.$round.out" 2>&1 &
    fi
    COLLECTOR_PID=$!
    STARTED_PIDS+=("$COLLECTOR_PID")
    wait_listening "$COLLECTOR_PORT" "$COLLECTOR_PID"
}

# Spans the collector received so far (rotel: sum of its per-request log lines).
collector_received() {
    local out="$OUT_DIR/collector.$1.out"
    if [ "$COLLECTOR" = rotel ]; then
        { grep -o 'Received traces.* spans=[0-9]*' "$out" || true; } | sed 's/.*spans=//' | awk '{ s += $1 } END { print s + 0 }'
    else
        sed -n 's/^otlp-sink requests=[0-9]* spans=\([0-9]*\)$/\1/p' "$out" | tail -n 1
    fi
}

# Stops the collector once what it received stops changing; sets RECEIVED.
stop_collector() {
    local round="$1" last=-1 now deadline=$((SECONDS + 10))
    if [ "$COLLECTOR" = rotel ]; then
        while now="$(collector_received "$round")"; [ "$now" != "$last" ] && [ "$SECONDS" -lt "$deadline" ]; do
            last="$now"
            sleep 0.5
        done
    fi
    kill -INT "$COLLECTOR_PID" 2>/dev/null || true
    wait "$COLLECTOR_PID" 2>/dev/null || true
    RECEIVED="$(collector_received "$round")"
}

# --- the three modes ---------------------------------------------------------------------
run_a() {
    local round="$1" line
    local foreign
    foreign="$(foreign_bpf a "$round")"
    line="$(churn "$OUT_DIR/churn.a.$round.log")"
    echo "mode=a round=$round $line $foreign" >>"$RESULTS"
    say "round $round a (nothing attached): $line"
}

run_b() {
    local round="$1" line pid progs
    stats_on
    "$TCPLIFE" >/dev/null 2>"$OUT_DIR/tcplife.$round.err" &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_for_bpf_progs "$pid" tcplife
    # Attached once it holds a link (libbpf attaches the tracepoint through a perf link).
    local deadline=$((SECONDS + 30))
    until [ "$(python3 "$REPORT" links "$pid")" -gt 0 ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "tcplife did not attach within 30 s"
        sleep 0.05
    done
    local foreign
    foreign="$(foreign_bpf b "$round" "$pid")"
    line="$(churn "$OUT_DIR/churn.b.$round.log")"
    progs="$(python3 "$REPORT" progs "$pid")"
    stop_and_sample "$pid"
    stats_off
    echo "$progs" >"$OUT_DIR/progs.b.$round.txt"
    echo "mode=b round=$round $line $(grep '^total ' <<<"$progs" | cut -d' ' -f2-) cpu_ticks=$STOP_TICKS vmhwm_kb=$STOP_HWM_KB exit=$STOP_RC $foreign" >>"$RESULTS"
    say "round $round b (tcplife > /dev/null): $line"
}

run_c() {
    local round="$1" line pid progs cpu0 collector0 collector1 accounting err
    err="$OUT_DIR/agent.$round.err"
    start_collector "$round"
    stats_on
    # shellcheck disable=SC2086 # AGENT_ARGS is a list of flags
    env "${SAMPLER_ENV[@]}" "$AGENT" --otlp-endpoint "http://127.0.0.1:$COLLECTOR_PORT" \
        --otlp-protocol grpc $AGENT_ARGS 2>"$err" &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_for_bpf_progs "$pid" otel-agent
    local deadline=$((SECONDS + 30))
    until grep -q 'probe attached' "$err"; do
        kill -0 "$pid" 2>/dev/null || die "otel-agent exited at start: $(tail -n 5 "$err")"
        [ "$SECONDS" -lt "$deadline" ] || die "otel-agent did not report its probe attached within 30 s"
        sleep 0.05
    done
    cpu0="$(cpu_ticks "$pid" || echo 0)"
    collector0="$(cpu_ticks "$COLLECTOR_PID" || echo 0)"
    local foreign
    foreign="$(foreign_bpf c "$round" "$pid")"
    line="$(churn "$OUT_DIR/churn.c.$round.log")"
    progs="$(python3 "$REPORT" progs "$pid")"
    stop_and_sample "$pid"
    stats_off
    collector1="$(cpu_ticks "$COLLECTOR_PID" || echo 0)"
    stop_collector "$round"
    echo "$progs" >"$OUT_DIR/progs.c.$round.txt"
    # The agent's final accounting (its one `final accounting` JSON line): the session
    # figures, the otlp output's, and the agent's verdict on the equation (reconciled=1).
    accounting="$(python3 scripts/final_accounting.py pairs "$err" otlp)" \
        || say "round $round: the agent logged no final accounting line (exit $STOP_RC; see $err)"
    echo "mode=c round=$round $line $(grep '^total ' <<<"$progs" | cut -d' ' -f2-) cpu_ticks=$((STOP_TICKS - cpu0)) cpu_ticks_total=$STOP_TICKS vmhwm_kb=$STOP_HWM_KB exit=$STOP_RC received=${RECEIVED:-0} collector_cpu_ticks=$((collector1 - collector0)) $foreign $accounting" >>"$RESULTS"
    say "round $round c (otel-agent -> $COLLECTOR): $line"
}

say "results and logs in $OUT_DIR"
say "$ROUNDS rounds of $(sed 's/./& /g; s/ $//' <<<"$MODES"); churn $DURATION (max $MAX_CONNECTIONS connections), $CHURN_THREADS client threads; collector $COLLECTOR; sampler ${SAMPLER_RATIO:-off}"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "kernel: $(uname -r), cpus: $(nproc), model: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "OTEL_* in the environment: $(env | grep '^OTEL_' | tr '\n' ' ' || true)"
    echo "agent sampler: ${SAMPLER_ENV[*]:-none (every span)}"
} >"$OUT_DIR/machine.txt"
orders=("a b c" "b c a" "c a b")
for round in $(seq 1 "$ROUNDS"); do
    for mode in ${orders[$(((round - 1) % 3))]}; do
        if [[ "$MODES" == *"$mode"* ]]; then
            "run_$mode" "$round"
        fi
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT_DIR/machine.txt"

python3 "$REPORT" summary "$RESULTS" "$OUT_DIR/machine.txt" "$COLLECTOR" | tee "$OUT_DIR/summary.txt"
say "raw results: $RESULTS; summary: $OUT_DIR/summary.txt"
