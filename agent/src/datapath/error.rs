//! Why loading or attaching the datapath failed.

use std::path::PathBuf;

use aya::programs::ProgramError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this build has no eBPF object (built with PORTCULLIS_SKIP_EBPF=1)")]
    NoObject,
    #[error("loading the eBPF object failed (need root or CAP_BPF+CAP_NET_ADMIN): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("opening cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("reading the host network namespace cookie: {0}")]
    NetnsCookie(std::io::Error),
    #[error("programs loaded for one attach point ({0}) cannot be attached at a second one")]
    SecondAttachPoint(PathBuf),
    #[error("attaching program {name} to the cgroup: {source}")]
    Attach { name: &'static str, source: std::io::Error },
    #[error("pinning {what}: {source}")]
    Pin { what: String, source: std::io::Error },
}
