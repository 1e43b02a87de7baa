//! `toServices`: what a Service stands for (pure: built from the API
//! objects, unit-tested in `desired_tests.rs`). Its ClusterIPs, which the
//! workload connects to and the socket hooks judge before a socket load
//! balancer rewrites them, and its backends, where such a balancer
//! (Cilium's kube-proxy replacement, in its own connect and sendmsg hooks,
//! after ours) sends the traffic: the packet on the pod's veth, and an
//! unconnected UDP datagram at `cgroup_skb/egress`, carry the backend's
//! address and target port, which the policy does not name. Cilium's own
//! `toServices` allows the endpoints for the same reason.
//!
//! Backends: the addresses of the Service's EndpointSlices (label
//! `kubernetes.io/service-name`, same namespace) whose endpoint is ready
//! (`conditions.ready` true or unknown, as the API says to read unknown),
//! or not ready but still serving (`serving: true`, i.e. terminating):
//! balancers fall back to those when no ready one is left, so a draining
//! Service keeps working. Not-ready endpoints, FQDN slices, and addresses
//! the API server refuses in Endpoints (loopback, link-local, multicast,
//! unspecified) open nothing: a slice must not open the node or the
//! metadata service.
//!
//! Ports: the rule names Service ports. On the ClusterIPs they apply as
//! written. On the backends each rule port becomes the target ports of the
//! Service ports it names (same number; same protocol, `ANY` naming all):
//! the port of the EndpointSlice with that Service port's name (a slice
//! carries the Service port's name and the target port's number). A rule
//! port that names nothing there (no such Service port, no slice port of
//! that name, or one without a number) applies to the backends as written.
//! Not both for every port: the Service port on a backend is a port nothing
//! sends to, and doubling the ports could overflow an address's
//! `CIDR_MAX_PORTS` and fail the pod's whole union. A rule without ports
//! allows every port on both.
//!
//! Bound: at most [`MAX_BACKENDS_PER_RULE`] backend addresses per rule
//! (ready ones first, then by address); the rest open nothing, and the
//! pod says so (`portcullis_pod_capped_services`, a warning).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::Service,
    discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
};

use crate::policy::{
    Protocol,
    model::{EgressRuleSpec, PortSpec, ServiceRefSpec, parse_protocol},
};

/// Backend addresses one rule opens at most: a Service with thousands of
/// endpoints must not fill the `CIDRS` map (65,536 entries for every pod
/// of the node).
pub const MAX_BACKENDS_PER_RULE: usize = 256;
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Services on record, by (namespace, name), with their
/// EndpointSlices.
#[derive(Debug, Clone, Default)]
pub struct ServiceIps {
    by_name: HashMap<(String, String), Svc>,
}

#[derive(Debug, Clone, Default)]
struct Svc {
    cluster_ips: Vec<IpAddr>,
    ports: Vec<NamedPort>,
    // Kept as objects: only the Services a policy names are read (a
    // cluster's slices churn; converting every one each pass is waste).
    slices: Vec<Arc<EndpointSlice>>,
}

/// A Service port: its name (`""` unnamed), number and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamedPort {
    name: String,
    port: u16,
    protocol: Protocol,
}

/// A `toServices` rule, expanded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expansion {
    /// `toCIDRs` rules: the ClusterIPs on the rule's ports, then the
    /// backends, one rule per set of ports.
    pub rules: Vec<EgressRuleSpec>,
    /// `namespace/name` of the Services that open nothing (not on record,
    /// or no ClusterIP and no backend).
    pub unresolved: Vec<String>,
    /// More backends than [`MAX_BACKENDS_PER_RULE`]: how many there are.
    pub capped: Option<usize>,
}

/// Backend ports: `None` all of them.
type Ports = Option<BTreeSet<(u16, Protocol)>>;

fn protocol(p: Option<&str>) -> Option<Protocol> {
    // The API server defaults every port's protocol to TCP.
    p.map_or(Some(Protocol::Tcp), |s| parse_protocol(s).ok())
}

impl ServiceIps {
    pub fn new(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Self {
        let mut by_name: HashMap<(String, String), Svc> = services
            .iter()
            .filter_map(|s| {
                let spec = s.spec.as_ref()?;
                let ips = spec.cluster_ips.clone().or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip])).unwrap_or_default();
                // Headless (`None`) parses as nothing.
                let cluster_ips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                let ports = (spec.ports.iter().flatten())
                    .filter_map(|p| {
                        Some(NamedPort {
                            name: p.name.clone().unwrap_or_default(),
                            port: u16::try_from(p.port).ok()?,
                            protocol: protocol(p.protocol.as_deref())?,
                        })
                    })
                    .collect();
                let key = (s.metadata.namespace.clone()?, s.metadata.name.clone()?);
                Some((key, Svc { cluster_ips, ports, slices: Vec::new() }))
            })
            .collect();
        for slice in slices {
            let m = &slice.metadata;
            let name = m.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(name)) = (&m.namespace, name)
                && let Some(svc) = by_name.get_mut(&(ns.clone(), name.clone()))
            {
                svc.slices.push(slice.clone());
            }
        }
        Self { by_name }
    }

    /// The Service's ClusterIPs (`None`: not on record).
    pub fn get(&self, key: &(String, String)) -> Option<&[IpAddr]> {
        self.by_name.get(key).map(|s| s.cluster_ips.as_slice())
    }

    /// `rule` (whose destination is `list`) as `toCIDRs` rules.
    pub fn expand(&self, rule: &EgressRuleSpec, list: &[ServiceRefSpec]) -> Expansion {
        let mut out = Expansion::default();
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        // Address -> (0 ready, 1 serving while terminating; its ports).
        let mut backends: BTreeMap<IpAddr, (u8, Ports)> = BTreeMap::new();
        for s in list {
            let Some(svc) = self.by_name.get(&(s.namespace.clone(), s.name.clone())) else {
                out.unresolved.push(format!("{}/{}", s.namespace, s.name));
                continue;
            };
            let mut opens = !svc.cluster_ips.is_empty();
            for ip in &svc.cluster_ips {
                if !cluster_ips.contains(ip) {
                    cluster_ips.push(*ip);
                }
            }
            for slice in svc.slices.iter().filter(|sl| sl.address_type != "FQDN") {
                let ports = backend_ports(rule.ports.as_deref(), &svc.ports, slice.ports.as_deref().unwrap_or_default());
                for (rank, ip) in slice.endpoints.iter().filter_map(rank).flat_map(|(r, e)| addresses(e).map(move |ip| (r, ip))) {
                    opens = true;
                    let entry = backends.entry(ip).or_insert((rank, Some(BTreeSet::new())));
                    entry.0 = entry.0.min(rank);
                    entry.1 = match (entry.1.take(), &ports) {
                        (Some(mut have), Some(more)) => {
                            have.extend(more);
                            Some(have)
                        }
                        _ => None,
                    };
                }
            }
            if !opens {
                out.unresolved.push(format!("{}/{}", s.namespace, s.name));
            }
        }
        if backends.len() > MAX_BACKENDS_PER_RULE {
            out.capped = Some(backends.len());
            let mut order: Vec<(u8, IpAddr)> = backends.iter().map(|(ip, (r, _))| (*r, *ip)).collect();
            order.sort_unstable();
            let drop: Vec<IpAddr> = order[MAX_BACKENDS_PER_RULE..].iter().map(|(_, ip)| *ip).collect();
            for ip in drop {
                backends.remove(&ip);
            }
        }
        if !cluster_ips.is_empty() {
            let to = cluster_ips.iter().map(IpAddr::to_string).collect();
            out.rules.push(EgressRuleSpec { to_cidrs: Some(to), to_services: None, ..rule.clone() });
        }
        let mut groups: BTreeMap<Ports, Vec<String>> = BTreeMap::new();
        for (ip, (_, ports)) in backends {
            groups.entry(ports).or_default().push(ip.to_string());
        }
        // An empty list would not validate, failing the pod's whole union
        // (not reached: every rule port gives at least itself).
        groups.retain(|ports, _| ports.as_ref().is_none_or(|p| !p.is_empty()));
        for (ports, to) in groups {
            let ports = ports.map(|set| {
                set.into_iter().map(|(port, p)| PortSpec { port: port.into(), protocol: Some(protocol_name(p).into()) }).collect()
            });
            out.rules.push(EgressRuleSpec { to_cidrs: Some(to), ports, ..EgressRuleSpec::default() });
        }
        out
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
        Protocol::Any => "ANY",
    }
}

/// Whether the endpoint counts, and how: 0 ready (or unknown), 1 serving
/// while terminating.
fn rank(e: &Endpoint) -> Option<(u8, &Endpoint)> {
    let c = e.conditions.as_ref();
    let (ready, serving) = (c.and_then(|c| c.ready), c.and_then(|c| c.serving));
    match (ready, serving) {
        (Some(false), Some(true)) => Some((1, e)),
        (Some(false), _) => None,
        _ => Some((0, e)),
    }
}

/// The endpoint's addresses a policy may open.
fn addresses(e: &Endpoint) -> impl Iterator<Item = IpAddr> + '_ {
    e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|ip| ip.to_canonical()).filter(|ip| match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_multicast() || v4.is_unspecified() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unicast_link_local() || v6.is_multicast() || v6.is_unspecified()),
    })
}

/// The backend ports of a rule's `ports` for one slice (module doc).
fn backend_ports(rule: Option<&[PortSpec]>, service: &[NamedPort], slice: &[EndpointPort]) -> Ports {
    let rule = rule?;
    let mut out = BTreeSet::new();
    for rp in rule {
        // Validated with the policy: these hold.
        let (Ok(port), Some(proto)) = (u16::try_from(rp.port), protocol(rp.protocol.as_deref())) else { continue };
        let mut named = false;
        for sp in service.iter().filter(|sp| sp.port == port && (proto == Protocol::Any || sp.protocol == proto)) {
            let same = |ep: &&EndpointPort| {
                ep.name.as_deref().unwrap_or_default() == sp.name && protocol(ep.protocol.as_deref()) == Some(sp.protocol)
            };
            for target in slice.iter().filter(same).filter_map(|ep| u16::try_from(ep.port?).ok()).filter(|p| *p != 0) {
                out.insert((target, sp.protocol));
                named = true;
            }
        }
        if !named {
            out.insert((port, proto));
        }
    }
    Some(out)
}
