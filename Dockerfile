# syntax=docker/dockerfile:1.7
#
# otel-agent container image.
#
#   docker build -t otel-agent:local .
#
# Stage "build" runs the project's own set-up (scripts/setup.sh build: rust-src for the
# nightly toolchain and bpf-linker 0.13.0 linked against the nightly toolchain's libLLVM)
# and the project's release build (cargo build --release --locked -p otel-agent). The eBPF
# probe is compiled by otel-agent/build.rs and embedded in the binary, so the runtime stage
# needs nothing but the binary and the C runtime it links against.
#
# Running the image needs privileges a plain `docker run` does not give; see
# docker-compose.yml and docs/DEPLOY.md for the exact set.

# The stable toolchain the project builds with (Debian 12 userland, as on its machines).
ARG RUST_IMAGE=rust:1.95.0-bookworm
# The nightly the probe is built with: a dated release of the nightly the project uses
# (rustc 1.97.0-nightly, LLVM 22), pinned so that bpf-linker's llvm-22 build keeps matching.
ARG RUST_NIGHTLY=nightly-2026-05-20
# Same Debian release as the build stage, so the binary finds the glibc it was linked with.
ARG RUNTIME_IMAGE=debian:12.11-slim

FROM ${RUST_IMAGE} AS build
ARG RUST_NIGHTLY
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# aya-build compiles the probe with `rustup run nightly`, so the pinned nightly is installed
# under its dated name (with rust-src, which -Z build-std=core needs) and made the toolchain
# that `nightly` names.
RUN rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src \
    && host="$(rustc -vV | sed -n 's/^host: //p')" \
    && ln -s "${RUST_NIGHTLY}-${host}" "${RUSTUP_HOME}/toolchains/nightly-${host}" \
    && rustup run nightly rustc --version

WORKDIR /src

# The project's set-up script alone first, so the bpf-linker build (about a minute) is
# cached across source changes. It skips rust-src (installed above) and builds bpf-linker
# with the recipe in /work/shared/TOOLCHAIN.md.
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh build && bpf-linker --version

COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p otel-agent \
    && install -D -m 0755 target/release/otel-agent /out/otel-agent

FROM ${RUNTIME_IMAGE} AS runtime
# Nothing is installed: the binary needs only the C runtime (libc, libgcc_s) that
# debian-slim ships, and its OTLP transports are plain HTTP/2 and HTTP/1.1.
COPY --from=build /out/otel-agent /usr/local/bin/otel-agent
# Runs as uid 0 on purpose: in a container, added capabilities (CAP_BPF, CAP_PERFMON) are
# only effective for uid 0; the orchestrator drops every other capability (see
# docker-compose.yml and deploy/kubernetes/).
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/otel-agent"]
