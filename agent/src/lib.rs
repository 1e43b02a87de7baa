//! Portcullis: per-pod egress enforcement in the kernel, hostname allowlists
//! learned from DNS in user space before the workload sees the answer.
//! Start with docs/ARCHITECTURE.md.

pub mod agent;
pub mod blocked;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod clickhouse;
pub mod datapath;
pub mod dns;
pub mod dnsgate;
pub mod enforcer;
pub mod exec;
pub mod explain;
pub mod handover;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod policy;
pub mod reconcile;
pub mod run;
pub mod telemetry;
pub mod util;
pub mod veth;
