//! The policy format (`*Spec`: exactly what YAML / the CRD `spec` holds) and
//! its validated form (`Policy`). Loading is all-or-nothing: a `Policy` only
//! exists if every field was valid, so the agent never enforces half a file.
//!
//! Field problems are reported with their path (`egress[1].toCIDRs[0]`)
//! because serde only knows line/column for syntax and type errors, and a path
//! is what a CRD user can act on.
//!
//! The spec types also make the CRDs' schema (`k8s::crd`): size bounds and
//! CEL rules here are what the API server checks at `kubectl apply`. The
//! agent still validates everything it receives (`Policy::from_spec`): the
//! schema is the first line, not the only one.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
#[cfg(feature = "k8s")]
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::names::{NameError, NameSelector};

// ---------------------------------------------------------------- spec (serde)

/// Top level of the policy file / `EgressPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Missing or empty: nothing but DNS to the trusted resolvers is allowed.
    #[serde(default)]
    pub egress: Vec<EgressRuleSpec>,
    #[serde(default)]
    pub dns: DnsSpec,
}

/// One allow rule: exactly one kind of destination, on some ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "k8s", x_kube(validation = Rule::new(
    "(has(self.toFQDNs) ? 1 : 0) + (has(self.toCIDRs) ? 1 : 0) + (has(self.toServices) ? 1 : 0) == 1"
).message("set exactly one of toFQDNs, toCIDRs or toServices")))]
pub struct EgressRuleSpec {
    /// Host names (exact or `*.` patterns) whose DNS answers, as the pod
    /// itself resolves them, open their addresses.
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 64)))]
    pub to_fqdns: Option<Vec<FqdnSpec>>,
    /// Addresses or networks without host bits. Inside an always-denied
    /// range they open exactly what they name.
    #[serde(rename = "toCIDRs", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 64), inner(length(max = 43))))]
    #[cfg_attr(feature = "k8s", x_kube(validation = Rule::new("self.all(c, isCIDR(c) ? cidr(c) == cidr(c).masked() : isIP(c))")
        .message("each entry is an IP address or a CIDR without host bits (e.g. 203.0.113.0/24)")))]
    pub to_cidrs: Option<Vec<String>>,
    /// Services, kept current as they change: their ClusterIPs on the
    /// rule's ports (Service ports), and their backends, where a socket
    /// load balancer sends the traffic: the ready (or terminating but
    /// serving) addresses of their EndpointSlices, at most 256 per rule, on
    /// the target ports those Service ports map to (a port the Service does
    /// not map: as written). A pod allowed a Service reaches its backends
    /// directly too.
    #[serde(rename = "toServices", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 16)))]
    pub to_services: Option<Vec<ServiceRefSpec>>,
    /// Missing: all ports and protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 16)))]
    pub ports: Option<Vec<PortSpec>>,
}

/// A host name: exactly one of an exact name or a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "k8s", x_kube(validation = Rule::new("has(self.matchName) != has(self.matchPattern)")
    .message("set exactly one of matchName or matchPattern")))]
pub struct FqdnSpec {
    /// An exact name, e.g. `api.openai.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_.-]+$")))]
    pub match_name: Option<String>,
    /// `*.example.com` (any subdomain) or `*` alone (any name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_.*-]+$")))]
    pub match_pattern: Option<String>,
}

/// A Service by namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRefSpec {
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub namespace: String,
    #[cfg_attr(feature = "k8s", schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    // Signed and wide so 0, -1 and 70000 get a message naming the field.
    /// 1-65535.
    #[cfg_attr(feature = "k8s", schemars(range(min = 1, max = 65535)))]
    pub port: i64,
    /// TCP (default), UDP, SCTP or ANY, any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "k8s",
        schemars(length(max = 4), regex(pattern = r"^([Tt][Cc][Pp]|[Uu][Dd][Pp]|[Ss][Cc][Tt][Pp]|[Aa][Nn][Yy])$"))
    )]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "k8s", derive(KubeSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    /// Missing: the nameservers of the pod's own resolv.conf (the node
    /// agent) or of /etc/resolv.conf. An explicit empty list trusts no
    /// resolver at all (DNS is denied). `IP`, `IP:PORT` or `[IPv6]:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 8), inner(length(max = 47))))]
    pub servers: Option<Vec<String>>,
    /// Names that may be resolved without being allowed as destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "k8s", schemars(length(max = 64), inner(length(max = 253))))]
    pub allow_names: Vec<String>,
}

// ------------------------------------------------------------ validated form

/// A validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub egress: Vec<EgressRule>,
    pub dns: DnsPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Where the rule came from, for error messages and logs.
    pub origin: RuleOrigin,
    pub to: Destination,
    /// Empty: all ports and all protocols.
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Fqdns(Vec<NameSelector>),
    /// Host bits are guaranteed clear.
    Cidrs(Vec<IpNet>),
    /// Resolved to the Services' ClusterIPs and backends by the node agent
    /// before compiling (`k8s::services`); elsewhere a compile error.
    Services(Vec<ServiceRefSpec>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// TCP, UDP and SCTP.
    Any,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsPolicy {
    /// `None`: use the system resolvers (resolv.conf) at compile time.
    pub servers: Option<Vec<SocketAddr>>,
    /// Names that may be resolved without being allowed as destinations.
    pub allow_names: Vec<NameSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOrigin {
    /// `egress[index]` of the policy.
    Policy(usize),
    /// `egress[index]` of a named policy object (`egresspolicy ns/name`).
    Named { policy: std::sync::Arc<str>, index: usize },
    /// Added by a command-line flag.
    Flag { flag: &'static str, value: String },
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::Policy(i) => write!(f, "egress[{i}]"),
            RuleOrigin::Named { policy, index } => write!(f, "{policy} egress[{index}]"),
            RuleOrigin::Flag { flag, value } => write!(f, "{flag} {value}"),
        }
    }
}

// ------------------------------------------------------------------- errors

/// What is wrong with one field value; the caller adds where it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    #[error("invalid CIDR {value:?}: {reason}")]
    Cidr { value: String, reason: String },
    #[error("CIDR {value:?} has host bits set (did you mean {network}?)")]
    HostBits { value: String, network: IpNet },
    #[error("port {0} is out of range 1..=65535")]
    Port(i64),
    #[error("invalid port {0:?} (expected a number 1..=65535)")]
    PortSyntax(String),
    #[error("unknown protocol {0:?} (expected TCP, UDP, SCTP or ANY)")]
    Protocol(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("invalid DNS server {0:?}: expected IP, IP:PORT or [IPv6]:PORT")]
    DnsServer(String),
    #[error("DNS server {0:?}: port 0 is not allowed")]
    DnsServerPort(String),
    #[error("set exactly one of toFQDNs, toCIDRs or toServices (found {0})")]
    Destination(&'static str),
    #[error("set exactly one of matchName or matchPattern (found {0})")]
    FqdnSelector(&'static str),
    #[error("empty list (omit the field instead{0})")]
    EmptyList(&'static str),
    #[error("{0:?} is not a DNS label (lower-case letters, digits and '-', at most 63)")]
    ServiceRef(String),
}

#[derive(Debug, Error)]
pub enum LoadError {
    // The underlying errors are part of the message, deliberately not a
    // `source`: printing the chain (`{:#}`) would repeat them.
    #[error("reading policy file {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{origin}: invalid policy: {error}")]
    Yaml { origin: String, error: Box<serde_saphyr::Error> },
    #[error("{origin}: the policy is empty (write `egress: []` to deny all egress but DNS)")]
    Empty { origin: String },
    #[error("{origin}: {field}: {problem}")]
    Invalid { origin: String, field: String, problem: FieldError },
}

// ------------------------------------------------------------------ loading

impl Policy {
    /// Reads and validates a YAML policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: path.to_owned(), error })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text. `origin` (a file name, "EgressPolicy
    /// ns/name", ...) prefixes every error message.
    pub fn from_yaml_str(yaml: &str, origin: &str) -> Result<Policy, LoadError> {
        let spec: Option<PolicySpec> = serde_saphyr::from_str(yaml)
            .map_err(|error| LoadError::Yaml { origin: origin.to_owned(), error: Box::new(error) })?;
        // An empty document is more likely a broken mount or a truncated file
        // than a deliberate "deny all", which is spelled `egress: []`.
        let spec = spec.ok_or_else(|| LoadError::Empty { origin: origin.to_owned() })?;
        Self::from_spec(&spec, origin)
    }

    /// Validates an already deserialized spec (e.g. from the CRD).
    pub fn from_spec(spec: &PolicySpec, origin: &str) -> Result<Policy, LoadError> {
        let invalid = |field: String, problem: FieldError| LoadError::Invalid { origin: origin.to_owned(), field, problem };
        let mut egress = Vec::with_capacity(spec.egress.len());
        for (i, rule) in spec.egress.iter().enumerate() {
            egress.push(rule_from_spec(i, rule).map_err(|(f, p)| invalid(f, p))?);
        }
        let servers = match &spec.dns.servers {
            None => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, s)| parse_dns_server(s).map_err(|p| invalid(format!("dns.servers[{j}]"), p)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let allow_names = spec
            .dns
            .allow_names
            .iter()
            .enumerate()
            .map(|(j, n)| NameSelector::pattern(n).map_err(|e| invalid(format!("dns.allowNames[{j}]"), e.into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { egress, dns: DnsPolicy { servers, allow_names } })
    }
}

/// Validates `egress[i]`; the error carries the field path.
fn rule_from_spec(i: usize, rule: &EgressRuleSpec) -> Result<EgressRule, (String, FieldError)> {
    let at = |sub: &str| format!("egress[{i}]{sub}");
    let set = [rule.to_fqdns.is_some(), rule.to_cidrs.is_some(), rule.to_services.is_some()].iter().filter(|s| **s).count();
    if set != 1 {
        return Err((at(""), FieldError::Destination(if set == 0 { "none" } else { "several" })));
    }
    let to = match (&rule.to_fqdns, &rule.to_cidrs, &rule.to_services) {
        (None, None, Some(list)) => {
            if list.is_empty() {
                return Err((at(".toServices"), FieldError::EmptyList("")));
            }
            for (j, s) in list.iter().enumerate() {
                for (field, v) in [("namespace", &s.namespace), ("name", &s.name)] {
                    if !is_dns_label(v) {
                        return Err((at(&format!(".toServices[{j}].{field}")), FieldError::ServiceRef(v.clone())));
                    }
                }
            }
            Destination::Services(list.clone())
        }
        (Some(list), _, _) => {
            if list.is_empty() {
                return Err((at(".toFQDNs"), FieldError::EmptyList("")));
            }
            let mut sels = Vec::with_capacity(list.len());
            for (j, f) in list.iter().enumerate() {
                let sel = match (&f.match_name, &f.match_pattern) {
                    (Some(n), None) => NameSelector::exact(n).map_err(|e| (at(&format!(".toFQDNs[{j}].matchName")), e.into()))?,
                    (None, Some(p)) => {
                        NameSelector::pattern(p).map_err(|e| (at(&format!(".toFQDNs[{j}].matchPattern")), e.into()))?
                    }
                    (Some(_), Some(_)) => {
                        return Err((at(&format!(".toFQDNs[{j}]")), FieldError::FqdnSelector("both")));
                    }
                    (None, None) => {
                        return Err((at(&format!(".toFQDNs[{j}]")), FieldError::FqdnSelector("neither")));
                    }
                };
                sels.push(sel);
            }
            Destination::Fqdns(sels)
        }
        (None, Some(list), _) => {
            if list.is_empty() {
                return Err((at(".toCIDRs"), FieldError::EmptyList("")));
            }
            let nets = list
                .iter()
                .enumerate()
                .map(|(j, c)| parse_cidr(c).map_err(|e| (at(&format!(".toCIDRs[{j}]")), e)))
                .collect::<Result<Vec<_>, _>>()?;
            Destination::Cidrs(nets)
        }
        (None, None, None) => return Err((at(""), FieldError::Destination("none"))),
    };
    let ports = match &rule.ports {
        None => Vec::new(),
        // `ports: []` meaning "every port" would be a trap; make it explicit.
        Some(list) if list.is_empty() => {
            return Err((at(".ports"), FieldError::EmptyList(" to allow all ports")));
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, p) in list.iter().enumerate() {
                let port = u16::try_from(p.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| (at(&format!(".ports[{j}].port")), FieldError::Port(p.port)))?;
                let protocol = match &p.protocol {
                    None => Protocol::Tcp,
                    Some(s) => parse_protocol(s).map_err(|e| (at(&format!(".ports[{j}].protocol")), e))?,
                };
                out.push(Port { port, protocol });
            }
            out
        }
    };
    Ok(EgressRule { origin: RuleOrigin::Policy(i), to, ports })
}

// ------------------------------------------------------------ value parsers

/// An RFC 1123 label, as Kubernetes names namespaces and Services.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `TCP`, `UDP`, `SCTP` or `ANY`, case-insensitive.
pub fn parse_protocol(s: &str) -> Result<Protocol, FieldError> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        "ANY" => Ok(Protocol::Any),
        _ => Err(FieldError::Protocol(s.to_owned())),
    }
}

/// A CIDR (`192.0.2.0/24`, `2001:db8::/32`) or a bare address (host route).
/// Host bits set is an error rather than silently widening or narrowing what
/// the author meant.
pub fn parse_cidr(s: &str) -> Result<IpNet, FieldError> {
    let net = if s.contains('/') {
        s.parse::<IpNet>().map_err(|e| FieldError::Cidr { value: s.to_owned(), reason: e.to_string() })?
    } else {
        let ip = s.parse::<IpAddr>().map_err(|e| FieldError::Cidr { value: s.to_owned(), reason: e.to_string() })?;
        IpNet::from(ip)
    };
    if net.trunc() != net {
        return Err(FieldError::HostBits { value: s.to_owned(), network: net.trunc() });
    }
    Ok(net)
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to 53.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, FieldError> {
    let addr = if let Ok(ip) = s.parse::<IpAddr>() {
        SocketAddr::new(ip, 53)
    } else {
        s.parse::<SocketAddr>().map_err(|_| FieldError::DnsServer(s.to_owned()))?
    };
    if addr.port() == 0 {
        return Err(FieldError::DnsServerPort(s.to_owned()));
    }
    Ok(addr)
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
