//! Embeds the eBPF object built by `cargo xtask build`.
//!
//! The object is compiled for `bpfel-unknown-none` with a toolchain the host
//! build may not have (Debian's rustc-web or nightly + rust-src, plus
//! bpf-linker), so it is built outside cargo's view by xtask and handed over
//! through `JWTGATE_EBPF_OBJ`. Without it an empty placeholder is embedded:
//! `cargo check`, clippy and the unit tests then work on any machine, and
//! `Datapath::open` reports that the object is missing.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=JWTGATE_EBPF_OBJ");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("jwtgate.bpf.o");
    match std::env::var_os("JWTGATE_EBPF_OBJ").filter(|v| !v.is_empty()) {
        Some(src) => {
            let src = PathBuf::from(src);
            // Rebuild when xtask rebuilt the object, even at the same path.
            println!("cargo:rerun-if-changed={}", src.display());
            std::fs::copy(&src, &dest).unwrap_or_else(|e| {
                panic!(
                    "copying JWTGATE_EBPF_OBJ={} to {}: {e}",
                    src.display(),
                    dest.display()
                )
            });
        }
        None => {
            std::fs::write(&dest, b"").expect("writing the empty eBPF placeholder");
        }
    }
}
