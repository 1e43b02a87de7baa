//! What the Kubernetes agent reports per pod (mode, what cannot be fully
//! enforced), about policy objects it refuses, whether its watches have
//! listed everything (readiness), and how long pods wait for their policy.
//! Written by the reconciler, read by scrapes: one short lock each.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tracing::warn;

use prometheus_client::encoding::DescriptorEncoder;

use super::families::{Extra, NO_LABELS, PodAnd, PodLabels, gauge, histogram};
use crate::{enforcer::Mode, util::lock};

/// Something about a pod that cgroup hooks cannot contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gap {
    /// `hostNetwork` in an enforced namespace: its sockets share the node's
    /// namespace (loopback rules are the host's).
    HostNetwork,
    /// A privileged container can leave its cgroup, load programs, and
    /// change the node's network.
    Privileged,
    /// `CAP_NET_RAW` (granted by container runtimes by default): packet
    /// sockets bypass the cgroup hooks (the veth backstop closes this).
    NetRaw,
    /// `CAP_NET_ADMIN`: TUN devices and forwarding bypass them.
    NetAdmin,
    /// gVisor or Kata: their traffic runs no cgroup program at all (it
    /// leaves through a packet socket or a VM's tap). Needs TC mode.
    SandboxedRuntime,
    /// No cgroup found for the pod (yet): the parent attach point denies
    /// whatever it sends, but the policy is not in force either.
    CgroupNotFound,
    /// The veth programs are not on the pod's veth (yet): found from its
    /// network namespace once a process of it runs. Until then a new veth
    /// drops everything (`--pod-veth-prefixes`).
    VethNotFound,
}

impl Gap {
    pub const ALL: [Gap; 7] = [
        Gap::HostNetwork,
        Gap::Privileged,
        Gap::NetRaw,
        Gap::NetAdmin,
        Gap::SandboxedRuntime,
        Gap::CgroupNotFound,
        Gap::VethNotFound,
    ];

    /// What the veth programs on the pod's veth close.
    pub fn closed_by_veth(self) -> bool {
        matches!(self, Gap::NetRaw | Gap::NetAdmin | Gap::SandboxedRuntime)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Gap::HostNetwork => "host-network",
            Gap::Privileged => "privileged",
            Gap::NetRaw => "cap-net-raw",
            Gap::NetAdmin => "cap-net-admin",
            Gap::SandboxedRuntime => "sandboxed-runtime",
            Gap::CgroupNotFound => "cgroup-not-found",
            Gap::VethNotFound => "veth-not-found",
        }
    }
}

/// One pod's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    pub namespace: String,
    pub pod: String,
    pub mode: Mode,
    pub gaps: Vec<Gap>,
    pub policies: usize,
    pub unresolved_services: usize,
    /// `toServices` rules with more backends than the cap, described.
    pub capped_services: Vec<String>,
}

/// Upper bounds (seconds) of the time-to-enforce histogram.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
pub struct K8sStats {
    pods: Mutex<Vec<PodRow>>,
    invalid: Mutex<Vec<(Arc<str>, String)>>,
    synced: AtomicBool,
    /// Set once start-up is done and every watch listed: `/readyz`.
    ready: AtomicBool,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl K8sStats {
    pub fn set_pods(&self, rows: Vec<PodRow>, synced: bool) {
        let mut pods = lock(&self.pods);
        // Said once per change (rows are set every pass, and more often
        // while veths are awaited), next to the metric.
        for r in rows.iter().filter(|r| !r.capped_services.is_empty()) {
            let before = pods.iter().find(|p| p.namespace == r.namespace && p.pod == r.pod);
            if before.is_none_or(|b| b.capped_services != r.capped_services) {
                warn!(pod = %format!("{}/{}", r.namespace, r.pod), rules = %r.capped_services.join("; "),
                    "toServices backends over the cap: the rest are not opened, so connections a socket load balancer \
                     sends there are dropped on the pod's veth (portcullis_pod_capped_services)");
            }
        }
        *pods = rows;
        drop(pods);
        self.synced.store(synced, Relaxed);
    }

    pub fn set_invalid(&self, problems: Vec<(Arc<str>, String)>) {
        *lock(&self.invalid) = problems;
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn pods(&self) -> Vec<PodRow> {
        lock(&self.pods).clone()
    }

    /// A pod waited `d` from being seen to its policy in force.
    pub fn observe_time_to_enforce(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn encode(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pods = self.pods();
        let lbl = |r: &PodRow| PodLabels { source_namespace: r.namespace.clone(), source_pod: r.pod.clone() };
        let rows: Vec<(PodLabels, &PodRow)> = pods.iter().map(|r| (lbl(r), r)).collect();
        let enforced = || rows.iter().filter(|(_, r)| r.mode != Mode::Exempt);
        gauge(
            enc,
            "portcullis_pod_mode",
            "Pods on this node by how the agent treats them (enforce, audit, exempt).",
            rows.iter().map(|(l, r)| (PodAnd { pod: l, extra: Extra::Mode(r.mode.as_str()) }, 1)),
        )?;
        gauge(
            enc,
            "portcullis_pod_enforcement_gaps",
            "1 where a pod cannot be fully enforced by cgroup hooks, by gap (host-network, privileged, cap-net-raw, cap-net-admin, sandboxed-runtime, cgroup-not-found, veth-not-found).",
            enforced().flat_map(|(l, r)| {
                Gap::ALL
                    .into_iter()
                    .map(move |g| (PodAnd { pod: l, extra: Extra::Gap(g.as_str()) }, i64::from(r.gaps.contains(&g))))
            }),
        )?;
        gauge(
            enc,
            "portcullis_pod_policies",
            "Policies selecting the pod (0: deny all but DNS).",
            enforced().map(|(l, r)| (PodAnd { pod: l, extra: Extra::None }, r.policies as i64)),
        )?;
        gauge(
            enc,
            "portcullis_pod_unresolved_services",
            "toServices entries of the pod's policies that open nothing (not on record, or no ClusterIP and no backend).",
            enforced().map(|(l, r)| (PodAnd { pod: l, extra: Extra::None }, r.unresolved_services as i64)),
        )?;
        gauge(
            enc,
            "portcullis_pod_capped_services",
            // 256: k8s::services::MAX_BACKENDS_PER_RULE (telemetry cannot name k8s).
            "toServices rules of the pod's policies with more backends (EndpointSlice addresses) than the 256 each opens.",
            enforced().map(|(l, r)| (PodAnd { pod: l, extra: Extra::None }, r.capped_services.len() as i64)),
        )?;
        let invalid: Vec<String> = lock(&self.invalid).iter().map(|(name, _)| name.to_string()).collect();
        gauge(
            enc,
            "portcullis_k8s_policy_invalid",
            "Policy objects whose current version the agent refuses (their last valid version stays in force).",
            invalid.iter().map(|n| ([("policy", n.as_str())], 1)),
        )?;
        gauge(
            enc,
            "portcullis_k8s_synced",
            "1 once every watch (pods, namespaces, policies, services, endpointslices) has listed everything.",
            [(NO_LABELS, i64::from(self.synced.load(Relaxed)))],
        )?;
        let buckets = self.buckets.iter().zip(BUCKETS).map(|(b, le)| (le, b.load(Relaxed))).collect();
        histogram(
            enc,
            "portcullis_time_to_enforce_seconds",
            "From a pod being seen without its policy in force (no cgroup yet, resolvers unknown) to its policy in force.",
            (self.sum_us.load(Relaxed) as f64 / 1e6, self.count.load(Relaxed), buckets),
        )
    }
}
