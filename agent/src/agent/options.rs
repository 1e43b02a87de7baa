//! What `Agent::start` is given: the choices of `exec`, `run` and the
//! Kubernetes agent.

use std::{os::fd::OwnedFd, path::PathBuf, time::Duration};

use crate::{
    blocked::LogSink,
    datapath::{Pins, loader::Attachment},
    dnsgate::GateOptions,
    enforcer::{Caps, TtlBounds},
};

/// What `Agent::start` needs.
pub struct AgentOptions {
    pub ttl: TtlBounds,
    /// Limits on what endpoints learn from DNS.
    pub caps: Caps,
    /// The blocked-connection log (`blocked::exec_log`, `blocked::node_log`).
    pub log: LogSink,
    /// Let cgroups below an attach point that are not endpoints pass.
    pub unmanaged_allow: bool,
    /// Denied-attempt events per endpoint per second (per CPU) and burst;
    /// the DNS gates' records per endpoint too (`gate::ratelimit`).
    pub events_per_sec: u32,
    pub events_burst: u32,
    pub gate: GateOptions,
    /// Node mode: pin programs and maps here (they outlive the process) and
    /// adopt what a previous agent pinned.
    pub pins: Option<Pins>,
    /// The programs go to one cgroup only, the endpoint's own (`exec`):
    /// their verdict cache is then the load's own map, which a cache hit
    /// reaches without a helper call (`Datapath::load`).
    pub one_attach_point: bool,
    /// Without pins: how the programs are attached (`exec`: to the cgroup
    /// for as long as it exists, so a killed agent leaves it enforced).
    pub attachment: Attachment,
    /// Node mode: the handover socket and the learned-state snapshot.
    pub state_dir: Option<PathBuf>,
    /// `exec --state-dir`: a socket here answers `explain` only (no
    /// takeover, no snapshot); removed at shutdown. (An unpinned `run`
    /// serves none: its default directory may be a pinned agent's.)
    pub explain_dir: Option<PathBuf>,
    /// Serve Prometheus metrics here (`metrics`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long a removed endpoint's series stay (`telemetry::grace`).
    pub metrics_pod_grace: Duration,
    /// The network namespace holding the pods' host-side veths (the node's):
    /// with it, the veth programs can be attached there (`attach_veth`),
    /// DNS they take off a pod's wire is served, and the DNS gates forward
    /// from there (never across a pod's veth).
    pub node_netns: Option<OwnedFd>,
    /// Flow records to ClickHouse (`agent/flows.rs`); its blocked-record
    /// tap is one of `log`'s outputs already.
    pub clickhouse: Option<crate::clickhouse::Pipeline>,
}
