//! Builds the eBPF probe (`otel-agent-ebpf`) with the nightly toolchain and bpf-linker and
//! places the object in `OUT_DIR`, where `probe.rs` embeds it.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../otel-agent-ebpf");
    let package = aya_build::Package {
        name: "otel-agent-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the eBPF probe failed; run scripts/setup.sh build to install rust-src and bpf-linker",
    )
}
