//! Portcullis: per-pod egress enforcement in the kernel, hostname allowlists
//! learned from DNS in user space before the workload sees the answer.
//! Start with docs/ARCHITECTURE.md.

pub mod cgroup;
pub mod check;
pub mod cli;
pub mod coverage;
pub mod datapath;
pub mod dns;
pub mod enforcer;
pub mod events;
pub mod exec;
pub mod gate;
pub mod handover;
pub mod inject;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod run;
pub mod runtime;
pub mod util;
