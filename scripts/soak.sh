#!/usr/bin/env bash
# Soak test (not part of scripts/test.sh or CI): runs the release agent exporting over OTLP/gRPC
# to a real rotel collector (blackhole exporter) while a bounded loop drives loopback TCP
# churn, samples the agent's resident memory every 10 s, then stops the agent with SIGINT and
# checks its final accounting (the `final accounting` JSON line, read by
# scripts/final_accounting.py): the agent's own verdict that the figures reconcile,
# records_read == exported and every lost_* counter 0. Needs root (the probe) and what
# `scripts/setup.sh test` installs (rotel).
#
#   scripts/soak.sh [DURATION_SECONDS]     default 600 (10 minutes), or SOAK_DURATION
#   SOAK_RATE=200 scripts/soak.sh 60       connections per second (two sessions each)
#
# Exit status: 0 when the accounting reconciles, 1 when it does not, 2 on a set-up failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

DURATION="${1:-${SOAK_DURATION:-600}}"
RATE="${SOAK_RATE:-200}"
SAMPLE_EVERY=10

say() { printf 'soak: %s\n' "$*" >&2; }
die() { printf 'soak: error: %s\n' "$*" >&2; exit 2; }

[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -ge "$SAMPLE_EVERY" ] \
    || die "DURATION_SECONDS must be a whole number of seconds, at least $SAMPLE_EVERY"
[[ "$RATE" =~ ^[0-9]+$ ]] && [ "$RATE" -ge 1 ] || die "SOAK_RATE must be a positive integer"
[ "$(id -u)" -eq 0 ] || die "run as root: the agent loads its eBPF probe"

DIR="$(mktemp -d /tmp/otel-agent-soak.XXXXXX)"
ROTEL_PID="" AGENT_PID="" DRIVER_PID=""
cleanup() {
    # Only the processes this script started, by pid.
    for pid in "$DRIVER_PID" "$AGENT_PID" "$ROTEL_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
}
trap cleanup EXIT

say "building the release agent"
cargo build --release --locked -p otel-agent >"$DIR/build.log" 2>&1 \
    || { cat "$DIR/build.log" >&2; die "cargo build --release failed"; }
AGENT_BIN="$PWD/target/release/otel-agent"

ROTEL="$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null)" \
    || die "rotel is not installed; run scripts/setup.sh test"
[ -x "$ROTEL" ] || die "rotel-agent not found at $ROTEL; run scripts/setup.sh test"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits (at most 10 s) until 127.0.0.1:$1 accepts connections.
wait_listening() {
    python3 - "$1" <<'EOF' || die "nothing listens on 127.0.0.1:$1 after 10 s; see $DIR"
import socket, sys, time
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
}

GRPC="$(free_port)"
HTTP="$(free_port)"
say "starting rotel on 127.0.0.1:$GRPC (gRPC) and 127.0.0.1:$HTTP (HTTP), blackhole exporter"
"$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$GRPC" --otlp-http-endpoint "127.0.0.1:$HTTP" \
    --exporter blackhole --pid-file "$DIR/rotel.pid" --log-file "$DIR/rotel.log" \
    >"$DIR/rotel.stdout" 2>&1 &
ROTEL_PID=$!
wait_listening "$GRPC"
wait_listening "$HTTP"

say "starting the agent, exporting to http://127.0.0.1:$GRPC over gRPC"
"$AGENT_BIN" --otlp-endpoint "http://127.0.0.1:$GRPC" --otlp-protocol grpc \
    >"$DIR/agent.stdout" 2>"$DIR/agent.stderr" &
AGENT_PID=$!
for _ in $(seq 1 300); do
    grep -q "probe attached" "$DIR/agent.stderr" && break
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$DIR/agent.stderr" >&2; die "the agent exited at start-up"; }
    sleep 0.1
done
grep -q "probe attached" "$DIR/agent.stderr" || die "the agent did not attach its probe within 30 s"

say "driving $RATE loopback connections/s for $DURATION s"
# One client and one server end per connection, in one process: connect, 1 KiB each way, the
# client closes first. Bounded by the deadline; prints the number of connections made.
python3 - "$DURATION" "$RATE" >"$DIR/driver.out" <<'EOF' &
import socket, sys, time
duration, rate = float(sys.argv[1]), float(sys.argv[2])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
address = listener.getsockname()
payload = b"x" * 1024
def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("early EOF")
        data += chunk
start = time.monotonic()
deadline, made = start + duration, 0
while time.monotonic() < deadline:
    client = socket.create_connection(address)
    server, _ = listener.accept()
    client.sendall(payload)
    read_exactly(server, len(payload))
    server.sendall(payload)
    read_exactly(client, len(payload))
    client.close()
    server.close()
    made += 1
    pause = start + made / rate - time.monotonic()
    if pause > 0:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
listener.close()
print(made)
EOF
DRIVER_PID=$!

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$AGENT_PID/status"; }
RSS_SAMPLES=()
STARTED=$SECONDS
while :; do
    kill -0 "$AGENT_PID" 2>/dev/null || { cat "$DIR/agent.stderr" >&2; die "the agent died during the soak"; }
    RSS_SAMPLES+=("$(rss_kib)")
    say "t=$((SECONDS - STARTED))s rss=${RSS_SAMPLES[-1]} KiB"
    [ $((SECONDS - STARTED)) -lt "$DURATION" ] || break
    sleep "$SAMPLE_EVERY"
done
wait "$DRIVER_PID" || die "the traffic driver failed; see $DIR/driver.out"
DRIVER_PID=""
CONNECTIONS="$(cat "$DIR/driver.out")"

say "stopping the agent with SIGINT"
kill -INT "$AGENT_PID"
AGENT_STATUS=0
wait "$AGENT_PID" || AGENT_STATUS=$?
AGENT_PID=""
ELAPSED=$((SECONDS - STARTED))

# The final accounting: the session figures and the OTLP output's, with the agent's verdict
# on the equation (reconciled=1), from its one `final accounting` line.
FIGURES="$(python3 scripts/final_accounting.py pairs "$DIR/agent.stderr" otlp)" \
    || { cat "$DIR/agent.stderr" >&2; die "no final accounting line from the agent"; }
counter() { grep -o "\(^\| \)$1=[0-9]*" <<<"$FIGURES" | cut -d= -f2; }
RECORDS="$(counter records_read)"
EXPORTED="$(counter exported)"
RSS_MAX=0
for kib in "${RSS_SAMPLES[@]}"; do [ "$kib" -gt "$RSS_MAX" ] && RSS_MAX=$kib; done

echo "duration:          ${ELAPSED} s (asked ${DURATION} s, ${RATE} connections/s)"
echo "connections made:  ${CONNECTIONS} (two sessions each)"
echo "sessions:          records_read=${RECORDS} exported=${EXPORTED}"
echo "agent RSS (KiB):   first=${RSS_SAMPLES[0]} last=${RSS_SAMPLES[-1]} max=${RSS_MAX} (${#RSS_SAMPLES[@]} samples, every ${SAMPLE_EVERY} s)"
echo "agent exit status: ${AGENT_STATUS}"
echo "final accounting:  ${FIGURES}"

FAILED=0
if [ "$AGENT_STATUS" -ne 0 ]; then
    echo "FAIL: the agent exited with ${AGENT_STATUS}, not 0"; FAILED=1
fi
if [ "$(counter reconciled)" != 1 ]; then
    echo "FAIL: the accounting does not reconcile: $(python3 scripts/final_accounting.py json "$DIR/agent.stderr")"; FAILED=1
fi
LOST="$(grep -o 'lost_[a-z_]*=[0-9]*' <<<"$FIGURES" | grep -v '=0$' || true)"
if [ -n "$LOST" ]; then
    echo "FAIL: sessions lost: $(tr '\n' ' ' <<<"$LOST")"; FAILED=1
fi
if [ "$EXPORTED" != "$RECORDS" ]; then
    echo "FAIL: exported=${EXPORTED} != records_read=${RECORDS}"; FAILED=1
fi
if [ "$RECORDS" -lt $((2 * CONNECTIONS)) ]; then
    echo "FAIL: fewer sessions read (${RECORDS}) than the driver made ($((2 * CONNECTIONS)))"; FAILED=1
fi
[ "$FAILED" -eq 0 ] && echo "OK: the accounting reconciles, records_read == exported, no lost_* counter above 0"
exit "$FAILED"
