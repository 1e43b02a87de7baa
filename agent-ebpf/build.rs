//! Rebuild when bpf-linker changes (aya-template): a new linker can change
//! the object even if no source changed.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
