//! Compiles a validated `Policy` into what the agent writes into the kernel
//! maps: FQDN rules (consulted in user space when a DNS answer is learned),
//! one `CIDRS` entry list per endpoint, and the trusted resolvers.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::net::SocketAddr;

use agent_common::{CIDR_KIND_ALLOW, CIDR_KIND_DENY_RANGE, CIDR_MAX_PORTS, CidrValue, PortRange, proto};
use ipnet::{IpNet, Ipv6Net};
use thiserror::Error;

use super::PolicyError;
use super::model::{Destination, Policy, Port, Protocol, RuleOrigin};
use super::names::NameSelector;
use super::ranges::{canonical_net, kernel_deny_entries, kernel_metadata_hosts, range_class};

/// A (protocol, port) an FQDN-learned address is allowed on, as keyed in
/// `LEARNED`. `PortKey::ALL` = every protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub proto: u8,
    pub port: u16,
}

impl PortKey {
    pub const ALL: PortKey = PortKey { proto: proto::ANY, port: 0 };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FqdnRule {
    /// Its entry in `CompiledPolicy::rules` (1-based).
    pub id: u32,
    pub origin: RuleOrigin,
    pub selectors: Vec<NameSelector>,
    /// Sorted, deduplicated; `[PortKey::ALL]` when the rule lists no ports.
    pub ports: Vec<PortKey>,
}

/// One `CIDRS` LPM entry (the agent adds the endpoint id to the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrEntry {
    /// Canonical: IPv4 as `::ffff:a.b.c.d/(96+n)`, host bits clear.
    pub net: Ipv6Net,
    pub value: CidrValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Each egress entry's text, in policy order: rule id `i + 1` (carried
    /// with learned addresses and CIDR port ranges, counted per endpoint:
    /// `portcullis_connections_by_rule_total{rule}`). Written by the
    /// policy's author, never by the workload.
    pub rules: Vec<String>,
    pub fqdn_rules: Vec<FqdnRule>,
    /// Sorted by prefix; no two entries share a prefix.
    pub cidr_entries: Vec<CidrEntry>,
    /// Deduplicated, in policy order.
    pub dns_servers: Vec<SocketAddr>,
    pub dns_allow_names: Vec<NameSelector>,
}

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("{rule} ({net}) needs {needed} port ranges{inherited}; the kernel holds at most {CIDR_MAX_PORTS} per CIDR")]
    TooManyPorts { rule: String, net: IpNet, needed: usize, inherited: String },
    #[error("dns.servers is not set and reading the system resolvers failed: {0}")]
    DefaultDns(#[source] Box<dyn StdError + Send + Sync>),
    #[error("dns.servers is not set and the system resolver configuration lists no nameservers")]
    NoDefaultDns,
    #[error("{rule}: toServices is resolved by the Kubernetes node agent (`portcullis agent`) only")]
    UnresolvedServices { rule: String },
}

impl CompiledPolicy {
    /// Whether the workload may never reach `ip` whatever DNS says: it is in
    /// an always-denied range and no CIDR rule opens it (the longest
    /// matching prefix decides, as in the kernel).
    pub fn unreachable(&self, ip: std::net::IpAddr) -> bool {
        if !super::is_always_denied(ip) {
            return false;
        }
        let ip6 = super::canonical(ip);
        let best = self.cidr_entries.iter().filter(|e| e.net.contains(&ip6)).max_by_key(|e| e.net.prefix_len());
        best.is_none_or(|e| e.value.kind != CIDR_KIND_ALLOW)
    }

    /// Sorted, deduplicated (proto, port) keys an IP learned for `name` is
    /// allowed on (union over all matching rules); empty = name not allowed.
    /// If any matching rule allows everything, the result is just
    /// `[PortKey::ALL]`: the kernel checks that key anyway, more are waste.
    /// The first rule allowing `name` on (`proto`, `port`): the id a
    /// learned key carries.
    pub fn rule_for(&self, name: &str, proto: u8, port: u16) -> u32 {
        let key = PortKey { proto, port };
        self.fqdn_rules
            .iter()
            .find(|r| r.selectors.iter().any(|s| s.matches(name)) && (r.ports.contains(&PortKey::ALL) || r.ports.contains(&key)))
            .map_or(0, |r| r.id)
    }

    /// The text of rule `id` (1-based), if any.
    pub fn rule_text(&self, id: u32) -> Option<&str> {
        self.rules.get((id as usize).checked_sub(1)?).map(String::as_str)
    }

    pub fn ports_for_name(&self, name: &str) -> Vec<PortKey> {
        let mut out: Vec<PortKey> = Vec::new();
        for rule in &self.fqdn_rules {
            if rule.selectors.iter().any(|s| s.matches(name)) {
                if rule.ports.contains(&PortKey::ALL) {
                    return vec![PortKey::ALL];
                }
                out.extend_from_slice(&rule.ports);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Name may be resolved (any fqdn rule or dns.allowNames matches).
    pub fn may_resolve(&self, name: &str) -> bool {
        self.fqdn_rules.iter().flat_map(|r| &r.selectors).any(|s| s.matches(name))
            || self.dns_allow_names.iter().any(|s| s.matches(name))
    }
}

/// Compiles `policy`. `default_dns` is called only when the policy does not
/// list `dns.servers` (normally `resolvconf::system_resolvers`).
///
/// CIDR semantics — "only an explicit CIDR rule may open a hole": the kernel
/// does one longest-prefix-match lookup, and the always-denied ranges are in
/// the same trie, so
/// * a rule broader than a denied range (e.g. `0.0.0.0/0`) does not open it:
///   the longer deny prefix wins;
/// * a rule exactly equal to a denied range (e.g. `10.0.0.0/8`) replaces that
///   deny entry and opens it, on the rule's ports;
/// * a rule inside a denied range opens just its prefix (`inside_deny_range`
///   set, so a port mismatch is still reported as a denied range).
///
/// Because the lookup returns only the longest match, every allow entry
/// carries the union of its own ports and those of each enclosing rule that
/// reaches it, i.e. that is not cut off by a denied range lying between the
/// two (`0.0.0.0/0:443` adds nothing to a `10.1.0.0/16:80` rule).
pub fn compile<E>(
    policy: &Policy,
    default_dns: impl FnOnce() -> Result<Vec<SocketAddr>, E>,
) -> Result<CompiledPolicy, PolicyError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut fqdn_rules = Vec::new();
    let mut rules = Vec::with_capacity(policy.egress.len());
    // Canonical prefix -> (port keys with the first rule giving each,
    // source labels). Merges the same prefix written in several rules (or
    // as IPv4 and as IPv4-mapped IPv6).
    let mut allows: BTreeMap<Ipv6Net, (BTreeMap<PortKey, u32>, Vec<String>)> = BTreeMap::new();
    for rule in &policy.egress {
        rules.push(rule_text(rule));
        let id = u32::try_from(rules.len()).unwrap_or(u32::MAX);
        let keys = port_keys(&rule.ports);
        match &rule.to {
            Destination::Fqdns(sels) => fqdn_rules.push(FqdnRule {
                id,
                origin: rule.origin.clone(),
                selectors: sels.clone(),
                ports: keys.into_iter().collect(),
            }),
            Destination::Cidrs(nets) => {
                for (j, net) in nets.iter().enumerate() {
                    let label = match &rule.origin {
                        RuleOrigin::Policy(i) => format!("egress[{i}].toCIDRs[{j}]"),
                        RuleOrigin::Named { policy, index } => format!("{policy} egress[{index}].toCIDRs[{j}]"),
                        flag => flag.to_string(),
                    };
                    let slot = allows.entry(canonical_net(*net)).or_default();
                    for k in &keys {
                        slot.0.entry(*k).or_insert(id);
                    }
                    slot.1.push(label);
                }
            }
            Destination::Services(_) => return Err(CompileError::UnresolvedServices { rule: rule.origin.to_string() }.into()),
        }
    }

    let cidr_entries = cidr_entries(&allows)?;

    let servers = match &policy.dns.servers {
        Some(list) => list.clone(),
        None => {
            let list = default_dns().map_err(|e| CompileError::DefaultDns(e.into()))?;
            if list.is_empty() {
                return Err(CompileError::NoDefaultDns.into());
            }
            list
        }
    };
    let mut dns_servers = Vec::with_capacity(servers.len());
    for s in servers {
        if !dns_servers.contains(&s) {
            dns_servers.push(s);
        }
    }

    Ok(CompiledPolicy { rules, fqdn_rules, cidr_entries, dns_servers, dns_allow_names: policy.dns.allow_names.clone() })
}

/// A rule's ports as keys: none = `ALL`; protocol ANY = TCP, UDP and SCTP.
fn port_keys(ports: &[Port]) -> BTreeSet<PortKey> {
    if ports.is_empty() {
        return BTreeSet::from([PortKey::ALL]);
    }
    let mut out = BTreeSet::new();
    for p in ports {
        let protos: &[u8] = match p.protocol {
            Protocol::Tcp => &[proto::TCP],
            Protocol::Udp => &[proto::UDP],
            Protocol::Sctp => &[proto::SCTP],
            Protocol::Any => &[proto::TCP, proto::UDP, proto::SCTP],
        };
        out.extend(protos.iter().map(|&proto| PortKey { proto, port: p.port }));
    }
    out
}

/// Deny entries plus allow entries, one per prefix (see `compile`).
fn cidr_entries(allows: &BTreeMap<Ipv6Net, (BTreeMap<PortKey, u32>, Vec<String>)>) -> Result<Vec<CidrEntry>, CompileError> {
    let deny = kernel_deny_entries();
    let mut out: Vec<CidrEntry> = deny
        .iter()
        .filter(|(net, _)| !allows.contains_key(net))
        .map(|&(net, kind)| CidrEntry { net, value: CidrValue { kind, range: range_class(net), ..CidrValue::default() } })
        .collect();
    // Metadata hosts, unless an allow entry at least as specific as the
    // range around them opens them (then it decides, as without them).
    for host in kernel_metadata_hosts() {
        let around = deny.iter().filter(|(d, _)| d.contains(&host)).map(|(d, _)| d.prefix_len()).max().unwrap_or(0);
        if !allows.keys().any(|p| p.contains(&host) && p.prefix_len() >= around) {
            let value = CidrValue { kind: CIDR_KIND_DENY_RANGE, range: range_class(host), ..CidrValue::default() };
            out.push(CidrEntry { net: host, value });
        }
    }

    for (p, (own, labels)) in allows {
        let mut keys = own.clone();
        let mut inherited = Vec::new();
        for (q, (q_keys, q_labels)) in allows {
            if q == p || !q.contains(p) {
                continue;
            }
            // A denied range D with Q ⊋ D ⊇ P cuts Q off from P.
            let cut_off =
                deny.iter().any(|(d, _)| d.prefix_len() > q.prefix_len() && d.prefix_len() <= p.prefix_len() && d.contains(p));
            if !cut_off {
                for (k, id) in q_keys {
                    keys.entry(*k).or_insert(*id);
                }
                inherited.extend(q_labels.iter().cloned());
            }
        }
        let ranges = port_ranges(&keys);
        if ranges.len() > CIDR_MAX_PORTS {
            let inherited = if inherited.is_empty() {
                String::new()
            } else {
                format!(" (its own ports plus those of enclosing {})", inherited.join(", "))
            };
            return Err(CompileError::TooManyPorts {
                rule: labels.join(", "),
                net: display_net(*p),
                needed: ranges.len(),
                inherited,
            });
        }
        let mut value = CidrValue {
            kind: CIDR_KIND_ALLOW,
            inside_deny_range: u32::from(deny.iter().any(|(d, _)| d.contains(p))),
            range: deny
                .iter()
                .filter(|(d, _)| d.contains(p))
                .max_by_key(|(d, _)| d.prefix_len())
                .map_or(0, |(d, _)| range_class(*d)),
            // Bounded by CIDR_MAX_PORTS just above.
            nports: ranges.len() as u32,
            ..CidrValue::default()
        };
        value.ports[..ranges.len()].copy_from_slice(&ranges);
        out.push(CidrEntry { net: *p, value });
    }
    out.sort_by_key(|e| e.net);
    Ok(out)
}

/// Keys to kernel port ranges: `ALL` alone becomes one `ANY` range; else
/// consecutive ports of one protocol and one rule merge into one range,
/// which carries the rule's id.
fn port_ranges(keys: &BTreeMap<PortKey, u32>) -> Vec<PortRange> {
    let rule16 = |id: u32| u16::try_from(id).unwrap_or(0);
    if let Some(id) = keys.get(&PortKey::ALL) {
        return vec![PortRange { proto: proto::ANY, port_lo: 0, port_hi: u16::MAX, rule: rule16(*id), ..PortRange::default() }];
    }
    let mut out: Vec<PortRange> = Vec::new();
    // BTreeMap order is (proto, port), so runs are adjacent.
    for (k, id) in keys {
        match out.last_mut() {
            Some(r) if r.proto == k.proto && r.rule == rule16(*id) && u32::from(r.port_hi) + 1 == u32::from(k.port) => {
                r.port_hi = k.port;
            }
            _ => out.push(PortRange {
                proto: k.proto,
                port_lo: k.port,
                port_hi: k.port,
                rule: rule16(*id),
                ..PortRange::default()
            }),
        }
    }
    out
}

/// An egress entry as its author wrote it, for the `rule` label: where it
/// is, what it allows, on which ports.
fn rule_text(rule: &super::model::EgressRule) -> String {
    use std::fmt::Write as _;
    let mut s = rule.origin.to_string();
    match &rule.to {
        Destination::Fqdns(sels) => {
            let names: Vec<String> = sels.iter().map(ToString::to_string).collect();
            let _ = write!(s, " toFQDNs {}", names.join(","));
        }
        Destination::Cidrs(nets) => {
            let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
            let _ = write!(s, " toCIDRs {}", nets.join(","));
        }
        Destination::Services(svcs) => {
            let _ = write!(s, " toServices ({})", svcs.len());
        }
    }
    if !rule.ports.is_empty() {
        let ports: Vec<String> = rule.ports.iter().map(|p| format!("{}/{:?}", p.port, p.protocol).to_lowercase()).collect();
        let _ = write!(s, " ports {}", ports.join(","));
    }
    s
}

/// A canonical prefix as the user would write it (IPv4 when mapped).
fn display_net(n: Ipv6Net) -> IpNet {
    match n.network().to_ipv4_mapped() {
        Some(v4) if n.prefix_len() >= 96 => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).map(IpNet::V4).unwrap_or(IpNet::V6(n)),
        _ => IpNet::V6(n),
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
