//! `portcullis explain`: is this pod allowed to reach HOST[:PORT], and
//! why? Answered by the running agent (over its root-only socket,
//! `handover`) from the live maps with the kernel's own decision
//! (`datapath::decide`), plus the smallest policy change that would allow
//! it, where one may.

mod client;
mod evaluate;
mod render;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use client::{answer, run};
pub use evaluate::evaluate;

/// What is asked: which endpoint, where to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// An endpoint by its name (`run` configs, `exec`), instead of a pod.
    pub endpoint: Option<String>,
    pub host: String,
    pub port: u16,
    /// "tcp", "udp", "sctp", "icmp" (ICMPv6 for an IPv6 address), or any
    /// other IP protocol by number ("47") or as the blocked log names it
    /// ("ip-proto-47").
    pub protocol: String,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub host: String,
    pub port: u16,
    pub protocol: String,
    /// "allowed", "blocked", "allowed-after-lookup" (a name the policy
    /// allows that this pod has not resolved yet: its next lookup opens
    /// it), or "audit" (the policy blocks it, but the endpoint is in audit
    /// mode: let through and logged).
    pub verdict: String,
    /// For a name: whether its DNS query is answered, and by which rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<NameDecision>,
    /// Each address the verdict is about (the IP asked, or the addresses
    /// this pod learned for the name), as the kernel decides it now.
    pub addresses: Vec<AddressVerdict>,
    /// One sentence: why.
    pub why: String,
    /// The smallest policy change that would allow it (a YAML snippet), if
    /// one may; `None` with `why_no_change` when none should.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_no_change: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameDecision {
    /// Queries for the name are forwarded (else refused: NXDOMAIN).
    pub resolvable: bool,
    /// Its addresses are learned for this port and protocol, by this rule.
    pub allowed_here: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressVerdict {
    pub ip: IpAddr,
    /// The kernel's reason (`allowed-fqdn`, `denied-range`...).
    pub reason: String,
    pub allowed: bool,
    /// The policy entry that allows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The always-denied range it falls in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// Seconds until a learned allowance expires (new connections are
    /// then refused until the name is resolved again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// The name this pod last resolved to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error(
        "no enforced endpoint {0} here (Kubernetes: a pod of this node not classified yet is denied until it is, \
         a pod of another node is its node's agent's; `run`: a cgroup outside the config is not enforced)"
    )]
    NoEndpoint(String),
    #[error("this agent enforces several endpoints: give --pod (with -n NAMESPACE) or --endpoint")]
    NoTarget,
    #[error("protocol {0:?}: use tcp, udp, sctp, icmp or an IP protocol number")]
    Protocol(String),
    #[error("{0:?} is not a host name or IP address")]
    Host(String),
}

/// `HOST`, `HOST:PORT`, `IPV6`, `[IPV6]:PORT` -> (host, port).
pub fn parse_target(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("{s:?}: expected HOST, HOST:PORT or [IPV6]:PORT");
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']').ok_or_else(bad)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((ip.to_owned(), port));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_owned(), default_port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (s, default_port),
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}
