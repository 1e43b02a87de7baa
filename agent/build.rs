//! Builds `agent-ebpf` for the BPF target (aya-template's split): the object
//! lands in `OUT_DIR/agent-ebpf` and `src/ebpf/loader.rs` embeds it.
//!
//! `PORTCULLIS_SKIP_EBPF=1` writes an empty object instead, for work on pure
//! user-space logic without bpf-linker; loading then fails with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_SKIP_EBPF");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().ok_or_else(|| anyhow!("agent has no parent dir"))?;
    let common = root.join("agent-common");
    println!("cargo:rerun-if-changed={}", common.display());
    if env::var("PORTCULLIS_SKIP_EBPF").is_ok_and(|v| v == "1") {
        let out = PathBuf::from(env::var("OUT_DIR")?).join("agent-ebpf");
        fs::write(&out, b"").with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }
    let ebpf_dir = root.join("agent-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf([Package { name: "agent-ebpf", root_dir: ebpf_dir, ..Default::default() }], Toolchain::default())
}
