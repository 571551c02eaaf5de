#!/usr/bin/env bash
# Quick start, part one: installs what the build needs (scripts/setup.sh build), builds the
# agent in release mode and runs it. Run as root. Arguments go to otel-agent, for example:
#   scripts/run-agent.sh --otlp-endpoint http://127.0.0.1:4317 --otlp-protocol grpc
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh build
cargo build --release --locked -p otel-agent
exec ./target/release/otel-agent "$@"
