//! What the Kubernetes agent reports per pod (mode, what cannot be fully
//! enforced), about policy objects it refuses, whether its watches have
//! listed everything (readiness), and how long pods wait for their policy.
//! Written by the reconciler, read by scrapes: one short lock each.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tracing::warn;

use super::exposition::{esc, family};
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

    pub fn render(&self, out: &mut String) {
        let pods = self.pods();
        let lbl = |r: &PodRow| format!("source_namespace=\"{}\",source_pod=\"{}\"", esc(&r.namespace), esc(&r.pod));
        family(out, "portcullis_pod_mode", "gauge", "Pods on this node by how the agent treats them (enforce, audit, exempt).");
        for r in &pods {
            let _ = writeln!(out, "portcullis_pod_mode{{{},mode=\"{}\"}} 1", lbl(r), r.mode.as_str());
        }
        family(
            out,
            "portcullis_pod_enforcement_gaps",
            "gauge",
            "1 where a pod cannot be fully enforced by cgroup hooks, by gap (host-network, privileged, cap-net-raw, cap-net-admin, sandboxed-runtime, cgroup-not-found).",
        );
        for r in pods.iter().filter(|r| r.mode != Mode::Exempt) {
            for g in Gap::ALL {
                let _ = writeln!(
                    out,
                    "portcullis_pod_enforcement_gaps{{{},gap=\"{}\"}} {}",
                    lbl(r),
                    g.as_str(),
                    u8::from(r.gaps.contains(&g))
                );
            }
        }
        family(out, "portcullis_pod_policies", "gauge", "Policies selecting the pod (0: deny all but DNS).");
        for r in pods.iter().filter(|r| r.mode != Mode::Exempt) {
            let _ = writeln!(out, "portcullis_pod_policies{{{}}} {}", lbl(r), r.policies);
        }
        family(
            out,
            "portcullis_pod_unresolved_services",
            "gauge",
            "toServices entries of the pod's policies that open nothing (not on record, or no ClusterIP and no backend).",
        );
        for r in pods.iter().filter(|r| r.mode != Mode::Exempt) {
            let _ = writeln!(out, "portcullis_pod_unresolved_services{{{}}} {}", lbl(r), r.unresolved_services);
        }
        family(
            out,
            "portcullis_pod_capped_services",
            "gauge",
            // 256: k8s::services::MAX_BACKENDS_PER_RULE (telemetry cannot name k8s).
            "toServices rules of the pod's policies with more backends (EndpointSlice addresses) than the 256 each opens.",
        );
        for r in pods.iter().filter(|r| r.mode != Mode::Exempt) {
            let _ = writeln!(out, "portcullis_pod_capped_services{{{}}} {}", lbl(r), r.capped_services.len());
        }
        family(
            out,
            "portcullis_k8s_policy_invalid",
            "gauge",
            "Policy objects whose current version the agent refuses (their last valid version stays in force).",
        );
        for (name, _) in lock(&self.invalid).iter() {
            let _ = writeln!(out, "portcullis_k8s_policy_invalid{{policy=\"{}\"}} 1", esc(name));
        }
        family(
            out,
            "portcullis_k8s_synced",
            "gauge",
            "1 once every watch (pods, namespaces, policies, services, endpointslices) has listed everything.",
        );
        let _ = writeln!(out, "portcullis_k8s_synced {}", u8::from(self.synced.load(Relaxed)));
        family(
            out,
            "portcullis_time_to_enforce_seconds",
            "histogram",
            "From a pod being seen without its policy in force (no cgroup yet, resolvers unknown) to its policy in force.",
        );
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "portcullis_time_to_enforce_seconds_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
        }
        let n = self.count.load(Relaxed);
        let _ = writeln!(out, "portcullis_time_to_enforce_seconds_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "portcullis_time_to_enforce_seconds_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "portcullis_time_to_enforce_seconds_count {n}");
    }
}
