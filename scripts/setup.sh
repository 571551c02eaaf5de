#!/usr/bin/env bash
# Installs what building and testing otel-agent needs on a fresh machine of this kind
# (Debian, rustup with stable and nightly, root). Each step is skipped when already done.
#
#   scripts/setup.sh build   rust-src for nightly and bpf-linker (enough to build and run)
#   scripts/setup.sh test    build, plus rustfmt and clippy, and the test peers (the rotel
#                            collector from PyPI, tcplife from Debian's libbpf-tools, iproute2,
#                            nftables)
#   scripts/setup.sh bench   test, plus bpftool (Debian's bpftool) for scripts/bench.sh
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
ROTEL_VERSION=0.0.1a15

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Components installed in a toolchain, one per line (captured, so that grep -q cannot cut
# the pipe under pipefail).
installed_components() {
    rustup component list --toolchain "$1" --installed 2>/dev/null || true
}

ensure_nightly_rust_src() {
    command -v rustup >/dev/null || die "rustup is not installed; install Rust with rustup first"
    rustup run nightly rustc --version >/dev/null 2>&1 \
        || die "the nightly toolchain is missing; run: rustup toolchain install nightly"
    if installed_components nightly | grep -q '^rust-src'; then
        return
    fi
    say "adding rust-src to the nightly toolchain (needed for -Z build-std=core)"
    rustup component add rust-src --toolchain nightly \
        || die "could not fetch rust-src for nightly; check access to the Rust component server and retry"
}

ensure_lint_components() {
    local toolchain
    for toolchain in stable nightly; do
        local components
        components="$(installed_components "$toolchain")"
        if ! grep -q '^clippy' <<<"$components" || ! grep -q '^rustfmt' <<<"$components"; then
            say "adding clippy and rustfmt to the $toolchain toolchain"
            rustup component add clippy rustfmt --toolchain "$toolchain" \
                || die "could not fetch clippy/rustfmt for $toolchain; check access to the Rust component server and retry"
        fi
    done
}

bpf_linker_ok() {
    command -v bpf-linker >/dev/null || return 1
    local version
    version="$(bpf-linker --version 2>/dev/null || true)"
    grep -q "$BPF_LINKER_VERSION" <<<"$version"
}

ensure_bpf_linker() {
    if bpf_linker_ok; then
        return
    fi
    # No prebuilt bpf-linker and no LLVM 22 development package exist here: link it
    # against the libLLVM shipped inside the nightly toolchain that compiles the probe.
    local lib so
    lib="$(rustup run nightly rustc --print sysroot)/lib"
    so="$(cd "$lib" && ls libLLVM.so.* 2>/dev/null | head -n 1)"
    [ -n "$so" ] || die "no libLLVM.so.* in $lib; the nightly toolchain is incomplete (rustup toolchain install nightly)"
    say "building bpf-linker $BPF_LINKER_VERSION against $lib/$so (about a minute)"
    RUSTFLAGS="-C link-arg=-L$lib -C link-arg=-l:$so -C link-arg=-Wl,-rpath,$lib" \
        cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
        --no-default-features --features llvm-22,no-llvm-linking \
        || die "could not build bpf-linker $BPF_LINKER_VERSION; check access to crates.io and retry"
    bpf_linker_ok || die "bpf-linker installed but ~/.cargo/bin is not on PATH"
}

# Debian packages the tests use: libbpf-tools (the reference tcplife), iproute2 (ip netns)
# and nftables (nft: the DNAT and masquerade between the test hosts of the NAT test).
ensure_test_packages() {
    if [ -x /usr/sbin/tcplife ] && command -v ip >/dev/null && command -v nft >/dev/null; then
        return
    fi
    say "installing libbpf-tools, iproute2 and nftables from Debian"
    command -v apt-get >/dev/null || die "apt-get is missing: install libbpf-tools, iproute2 and nftables by hand"
    apt-get update -qq || die "apt-get update failed; check access to the Debian mirrors"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libbpf-tools iproute2 nftables >/dev/null \
        || die "could not install libbpf-tools, iproute2 and nftables with apt-get"
}

# bpftool reads the probes' kernel statistics (run_time_ns, run_cnt) for scripts/bench.sh.
ensure_bench_packages() {
    if command -v bpftool >/dev/null; then
        return
    fi
    say "installing bpftool from Debian"
    command -v apt-get >/dev/null || die "apt-get is missing: install bpftool by hand"
    apt-get update -qq || die "apt-get update failed; check access to the Debian mirrors"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftool >/dev/null \
        || die "could not install bpftool with apt-get"
}

# Prints the path of the rotel-agent binary that the rotel wheel ships inside its package.
rotel_agent_path() {
    python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null
}

ensure_rotel() {
    local installed
    installed="$(python3 -m pip show rotel 2>/dev/null || true)"
    if grep -q "^Version: $ROTEL_VERSION$" <<<"$installed" && [ -x "$(rotel_agent_path)" ]; then
        return
    fi
    say "installing the rotel OpenTelemetry collector $ROTEL_VERSION from PyPI"
    python3 -m pip install --quiet --root-user-action=ignore "rotel==$ROTEL_VERSION" \
        || die "could not install rotel==$ROTEL_VERSION from PyPI; check access to PyPI and retry"
    [ -x "$(rotel_agent_path)" ] || die "rotel installed but its rotel-agent binary is missing"
}

export PATH="$HOME/.cargo/bin:$PATH"
case "${1:-build}" in
    build) ensure_nightly_rust_src; ensure_bpf_linker ;;
    test)
        ensure_nightly_rust_src
        ensure_bpf_linker
        ensure_lint_components
        ensure_rotel
        ensure_test_packages
        ;;
    bench)
        ensure_nightly_rust_src
        ensure_bpf_linker
        ensure_lint_components
        ensure_rotel
        ensure_test_packages
        ensure_bench_packages
        ;;
    *) die "unknown target '${1}'; use 'build', 'test' or 'bench'" ;;
esac
