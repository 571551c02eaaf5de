#!/usr/bin/env bash
# Quick start, part two: installs what the tests need (scripts/setup.sh test), then runs the
# whole suite: formatting, clippy for the userspace crates and for the eBPF crate (on its
# real bpfel target), the module graph (one-way dependencies), the static checks of the
# deployment files, the unit tests, and the privileged and end-to-end tests (root needed:
# they load the probe into the kernel and start the rotel collector and tcplife).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*" >&2; }

scripts/setup.sh test

step "cargo fmt --check"
cargo fmt --all --check

step "clippy: userspace crates"
cargo clippy --locked --workspace --exclude otel-agent-ebpf --all-targets --features otel-agent-tests/privileged -- -D warnings

step "clippy: eBPF crate (bpfel-unknown-none, nightly)"
CARGO_TARGET_DIR=target/ebpf-clippy RUSTFLAGS='--cfg=bpf_target_arch="x86_64"' \
    cargo +nightly clippy --locked -p otel-agent-ebpf --target bpfel-unknown-none \
    -Z build-std=core --bins -- -D warnings

step "module graph: dependencies run one way (no cycle between modules or stage folders)"
python3 scripts/module_graph.py >/dev/null

step "deployment files: collector config, docker-compose, Kubernetes manifests, Dockerfile"
scripts/check-deploy.sh

step "build the agent binary used by the end-to-end tests"
cargo build --locked -p otel-agent

step "unit, privileged and end-to-end tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked --workspace --exclude otel-agent-ebpf --features otel-agent-tests/privileged 2>&1 | tee "$log"
# One closing line for the whole suite (cargo's own last line is a doc-test binary's).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"
