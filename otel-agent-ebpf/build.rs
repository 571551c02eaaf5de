//! Fails early, with the command that fixes it, when `bpf-linker` is missing, and rebuilds
//! the probe when the linker changes.

fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(error) => {
            println!(
                "cargo:warning=bpf-linker not found on PATH ({error}); run scripts/setup.sh build"
            );
            std::process::exit(1);
        }
    }
}
