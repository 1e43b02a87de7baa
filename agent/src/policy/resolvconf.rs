//! The default trusted resolvers: the nameservers of /etc/resolv.conf, read
//! with hickory-resolver's parser so options, comments and scoped IPv6
//! addresses are handled the way a real resolver library handles them.

use std::net::SocketAddr;

use hickory_resolver::net::NetError;
use hickory_resolver::system_conf::{parse_resolv_conf, read_system_conf};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("reading nameservers from /etc/resolv.conf: {0}")]
pub struct SystemDnsError(#[source] pub NetError);

/// The nameservers of /etc/resolv.conf, each with its port (53).
pub fn system_resolvers() -> Result<Vec<SocketAddr>, SystemDnsError> {
    let (config, _opts) = read_system_conf().map_err(SystemDnsError)?;
    Ok(addrs(config.name_servers()))
}

/// Same, from resolv.conf contents (for tests and non-default paths).
pub fn resolvers_from_resolv_conf(data: &[u8]) -> Result<Vec<SocketAddr>, SystemDnsError> {
    let (config, _opts) = parse_resolv_conf(data).map_err(SystemDnsError)?;
    Ok(addrs(config.name_servers()))
}

/// One address per (IP, port); hickory lists a UDP and a TCP connection per
/// server, and the kernel trusts a resolver for both anyway.
fn addrs(servers: &[hickory_resolver::config::NameServerConfig]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for s in servers {
        for c in &s.connections {
            let a = SocketAddr::new(s.ip, c.port);
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers() {
        let conf = b"# generated\nsearch default.svc.cluster.local svc.cluster.local\n\
nameserver 10.96.0.10\nnameserver 2001:db8::53\noptions ndots:5\n";
        let got = resolvers_from_resolv_conf(conf).unwrap();
        let want: Vec<SocketAddr> = vec!["10.96.0.10:53".parse().unwrap(), "[2001:db8::53]:53".parse().unwrap()];
        assert_eq!(got, want);
    }

    #[test]
    fn no_nameserver_is_an_error() {
        let e = resolvers_from_resolv_conf(b"search example.com\n").unwrap_err();
        assert!(e.to_string().starts_with("reading nameservers from /etc/resolv.conf"), "{e}");
    }
}
