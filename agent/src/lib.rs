//! Portcullis: per-pod egress enforcement in the kernel, hostname allowlists
//! learned from DNS in user space before the workload sees the answer.
//! Start with docs/ARCHITECTURE.md.

pub mod dns;
pub mod ebpf;
pub mod policy;
