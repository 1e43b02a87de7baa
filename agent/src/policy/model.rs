//! The policy format (`*Spec`: exactly what YAML / the CRD `spec` holds) and
//! its validated form (`Policy`). Loading is all-or-nothing: a `Policy` only
//! exists if every field was valid, so the agent never enforces half a file.
//!
//! Field problems are reported with their path (`egress[1].toCIDRs[0]`)
//! because serde only knows line/column for syntax and type errors, and a path
//! is what a CRD user can act on.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRuleSpec {
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSpec>>,
    #[serde(rename = "toCIDRs", default, skip_serializing_if = "Option::is_none")]
    pub to_cidrs: Option<Vec<String>>,
    /// Missing: all ports and protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    /// Signed and wide so 0, -1 and 70000 get a message naming the field.
    pub port: i64,
    /// TCP (default), UDP, SCTP or ANY, any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    /// Missing: the nameservers of /etc/resolv.conf. An explicit empty list
    /// trusts no resolver at all (DNS is denied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    /// Added by a command-line flag.
    Flag { flag: &'static str, value: String },
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::Policy(i) => write!(f, "egress[{i}]"),
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
    #[error("set exactly one of toFQDNs or toCIDRs (found {0})")]
    Destination(&'static str),
    #[error("set exactly one of matchName or matchPattern (found {0})")]
    FqdnSelector(&'static str),
    #[error("empty list (omit the field instead{0})")]
    EmptyList(&'static str),
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
    let to = match (&rule.to_fqdns, &rule.to_cidrs) {
        (Some(_), Some(_)) => return Err((at(""), FieldError::Destination("both"))),
        (None, None) => return Err((at(""), FieldError::Destination("neither"))),
        (Some(list), None) => {
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
        (None, Some(list)) => {
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
