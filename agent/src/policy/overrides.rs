//! Command-line additions to a policy: `--allow-fqdn`, `--allow-cidr`,
//! `--dns-server`. Each flag behaves exactly as if its value had been appended
//! to the corresponding list of the policy file, so there is one set of
//! semantics to learn. In particular `--dns-server` on a policy without
//! `dns.servers` replaces the resolv.conf default, just as a one-entry
//! `dns.servers` list in the file would.

use std::net::SocketAddr;

use thiserror::Error;

use super::model::{Destination, EgressRule, FieldError, Policy, Port, Protocol, RuleOrigin, parse_cidr, parse_dns_server};
use super::names::NameSelector;

pub const FLAG_ALLOW_FQDN: &str = "--allow-fqdn";
pub const FLAG_ALLOW_CIDR: &str = "--allow-cidr";
pub const FLAG_DNS_SERVER: &str = "--dns-server";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{flag} {value:?}: {problem}")]
pub struct OverrideError {
    pub flag: &'static str,
    pub value: String,
    pub problem: FieldError,
}

/// Parsed flag values, ready to merge into a `Policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// One rule per `--allow-fqdn` / `--allow-cidr`, in flag order.
    pub rules: Vec<EgressRule>,
    pub dns_servers: Vec<SocketAddr>,
}

impl Overrides {
    /// Parses the raw values of each repeated flag. Stops at the first bad
    /// value: nothing is applied from a partly valid command line.
    pub fn from_flags<S: AsRef<str>>(allow_fqdn: &[S], allow_cidr: &[S], dns_server: &[S]) -> Result<Overrides, OverrideError> {
        let mut rules = Vec::with_capacity(allow_fqdn.len() + allow_cidr.len());
        for v in allow_fqdn {
            rules.push(parse_allow_fqdn(v.as_ref())?);
        }
        for v in allow_cidr {
            rules.push(parse_allow_cidr(v.as_ref())?);
        }
        let dns_servers = dns_server.iter().map(|v| parse_dns_server_flag(v.as_ref())).collect::<Result<_, _>>()?;
        Ok(Overrides { rules, dns_servers })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.dns_servers.is_empty()
    }
}

impl Policy {
    /// Appends the flag rules and DNS servers (see the module doc for why
    /// `--dns-server` replaces the resolv.conf default).
    pub fn apply_overrides(&mut self, o: &Overrides) {
        self.egress.extend(o.rules.iter().cloned());
        if !o.dns_servers.is_empty() {
            self.dns.servers.get_or_insert_with(Vec::new).extend(o.dns_servers.iter().copied());
        }
    }
}

fn flag_err(flag: &'static str, value: &str, problem: FieldError) -> OverrideError {
    OverrideError { flag, value: value.to_owned(), problem }
}

/// Port from a flag: 1..=65535.
fn parse_port(s: &str) -> Result<u16, FieldError> {
    let n: i64 = s.parse().map_err(|_| FieldError::PortSyntax(s.to_owned()))?;
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or(FieldError::Port(n))
}

/// Single TCP port, or all ports when absent.
fn tcp_ports(port: Option<u16>) -> Vec<Port> {
    port.map(|port| Port { port, protocol: Protocol::Tcp }).into_iter().collect()
}

/// `NAME[:PORT]`: NAME is a name or pattern (`*.example.com`); with PORT the
/// rule allows TCP to that port, without it all ports and protocols.
pub fn parse_allow_fqdn(value: &str) -> Result<EgressRule, OverrideError> {
    let err = |p| flag_err(FLAG_ALLOW_FQDN, value, p);
    // Names never contain ':', so the last one starts the port.
    let (name, port) = match value.rsplit_once(':') {
        Some((name, port)) => (name, Some(parse_port(port).map_err(err)?)),
        None => (value, None),
    };
    let sel = NameSelector::pattern(name).map_err(|e| err(e.into()))?;
    Ok(EgressRule {
        origin: RuleOrigin::Flag { flag: FLAG_ALLOW_FQDN, value: value.to_owned() },
        to: Destination::Fqdns(vec![sel]),
        ports: tcp_ports(port),
    })
}

/// `CIDR[:PORT]`, with IPv6 written `[2001:db8::/32]:443` when it has a port.
/// A bare IPv6 CIDR (more than one ':') never has a port: `2001:db8::/32`
/// would otherwise be ambiguous.
pub fn parse_allow_cidr(value: &str) -> Result<EgressRule, OverrideError> {
    let err = |p| flag_err(FLAG_ALLOW_CIDR, value, p);
    let (cidr, port) = if let Some(rest) = value.strip_prefix('[') {
        match rest.split_once(']') {
            Some((cidr, "")) => (cidr, None),
            Some((cidr, tail)) => match tail.strip_prefix(':') {
                Some(port) => (cidr, Some(parse_port(port).map_err(err)?)),
                None => {
                    return Err(err(FieldError::Cidr { value: value.to_owned(), reason: "expected \"[CIDR]:PORT\"".to_owned() }));
                }
            },
            None => {
                return Err(err(FieldError::Cidr { value: value.to_owned(), reason: "missing ']'".to_owned() }));
            }
        }
    } else if value.matches(':').count() == 1 {
        match value.split_once(':') {
            Some((cidr, port)) => (cidr, Some(parse_port(port).map_err(err)?)),
            None => (value, None),
        }
    } else {
        (value, None)
    };
    let net = parse_cidr(cidr).map_err(err)?;
    Ok(EgressRule {
        origin: RuleOrigin::Flag { flag: FLAG_ALLOW_CIDR, value: value.to_owned() },
        to: Destination::Cidrs(vec![net]),
        ports: tcp_ports(port),
    })
}

/// `IP[:PORT]` or `[IPv6]:PORT`, port 53 by default.
pub fn parse_dns_server_flag(value: &str) -> Result<SocketAddr, OverrideError> {
    parse_dns_server(value).map_err(|p| flag_err(FLAG_DNS_SERVER, value, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn cidr_of(r: &EgressRule) -> IpNet {
        match &r.to {
            Destination::Cidrs(n) if n.len() == 1 => n[0],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allow_fqdn() {
        let r = parse_allow_fqdn("api.openai.com:443").unwrap();
        assert_eq!(r.ports, [Port { port: 443, protocol: Protocol::Tcp }]);
        assert_eq!(r.origin.to_string(), "--allow-fqdn api.openai.com:443");
        let Destination::Fqdns(sels) = &r.to else { panic!("{r:?}") };
        assert!(sels[0].matches("API.openai.com."));

        let r = parse_allow_fqdn("**.example.com").unwrap();
        assert!(r.ports.is_empty());
        let Destination::Fqdns(sels) = &r.to else { panic!("{r:?}") };
        assert!(sels[0].matches("a.b.example.com") && !sels[0].matches("example.com"));

        for (bad, want) in [
            ("api.x.com:", "--allow-fqdn \"api.x.com:\": invalid port \"\""),
            ("api.x.com:0", "--allow-fqdn \"api.x.com:0\": port 0 is out of range"),
            ("api.x.com:65536", "port 65536 is out of range"),
            ("a*.x.com", "--allow-fqdn \"a*.x.com\": \"a*.x.com\": '*' or '**' may only"),
            (":443", "--allow-fqdn \":443\": \"\": name is empty"),
            ("a:b:443", "invalid character ':'"),
        ] {
            let e = parse_allow_fqdn(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: got {e}");
        }
    }

    #[test]
    fn allow_cidr() {
        let table: &[(&str, &str, Option<u16>)] = &[
            ("192.0.2.0/24", "192.0.2.0/24", None),
            ("192.0.2.0/24:8443", "192.0.2.0/24", Some(8443)),
            ("192.0.2.7:22", "192.0.2.7/32", Some(22)),
            ("2001:db8::/32", "2001:db8::/32", None),
            ("2001:db8::1", "2001:db8::1/128", None),
            ("[2001:db8::/32]:443", "2001:db8::/32", Some(443)),
            ("[2001:db8::/32]", "2001:db8::/32", None),
            ("[192.0.2.0/24]:80", "192.0.2.0/24", Some(80)),
        ];
        for (v, net, port) in table {
            let r = parse_allow_cidr(v).unwrap();
            assert_eq!(cidr_of(&r).to_string(), *net, "{v}");
            assert_eq!(r.ports, tcp_ports(*port), "{v}");
        }
        for (bad, want) in [
            ("10.0.0.1/8", "--allow-cidr \"10.0.0.1/8\": CIDR \"10.0.0.1/8\" has host bits set"),
            ("10.0.0/8:443", "--allow-cidr \"10.0.0/8:443\": invalid CIDR \"10.0.0/8\""),
            ("192.0.2.0/24:x", "invalid port \"x\""),
            ("[2001:db8::/32]443", "expected \"[CIDR]:PORT\""),
            ("[2001:db8::/32:443", "missing ']'"),
            ("2001:db8::/32:443", "invalid CIDR"),
        ] {
            let e = parse_allow_cidr(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: got {e}");
        }
    }

    #[test]
    fn dns_server_flag() {
        assert_eq!(parse_dns_server_flag("198.51.100.53").unwrap().to_string(), "198.51.100.53:53");
        assert_eq!(parse_dns_server_flag("[2001:db8::53]:5353").unwrap().to_string(), "[2001:db8::53]:5353");
        let e = parse_dns_server_flag("resolver").unwrap_err().to_string();
        assert!(e.starts_with("--dns-server \"resolver\": invalid DNS server"), "{e}");
    }

    #[test]
    fn merge_into_policy() {
        let o = Overrides::from_flags(&["api.x.com:443"], &["192.0.2.0/24"], &["198.51.100.53"]).unwrap();
        assert!(!o.is_empty());
        let mut p = Policy::default();
        p.apply_overrides(&o);
        assert_eq!(p.egress.len(), 2);
        assert_eq!(p.dns.servers, Some(vec!["198.51.100.53:53".parse().unwrap()]));

        // Appends to an explicit list.
        let mut p =
            Policy::from_yaml_str("egress: [{toCIDRs: [\"203.0.113.0/24\"]}]\ndns: {servers: [\"198.51.100.1\"]}", "t").unwrap();
        p.apply_overrides(&o);
        assert_eq!(p.egress.len(), 3);
        assert_eq!(p.egress[0].origin, RuleOrigin::Policy(0));
        assert_eq!(p.egress[2].origin.to_string(), "--allow-cidr 192.0.2.0/24");
        assert_eq!(p.dns.servers.as_ref().map(Vec::len), Some(2));

        // No DNS flag: the resolv.conf default stays.
        let o = Overrides::from_flags::<&str>(&[], &["192.0.2.0/24"], &[]).unwrap();
        let mut p = Policy::default();
        p.apply_overrides(&o);
        assert_eq!(p.dns.servers, None);

        let e = Overrides::from_flags(&["ok.com"], &["nope"], &[]).unwrap_err();
        assert_eq!(e.flag, FLAG_ALLOW_CIDR);
    }
}
