//! Always-denied destination ranges: private networks, loopback, link-local
//! (cloud metadata services live there), multicast, reserved space, and the
//! same IPv4 ranges reached through IPv4-mapped and NAT64 IPv6 addresses, so
//! a workload cannot dodge the IPv4 list by spelling an address in IPv6.
//!
//! Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32) are deliberately NOT here: tests use them as public hosts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{CIDR_KIND_DENY_RANGE, CIDR_KIND_LOOPBACK, flow::range};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

struct V4Range {
    net: Ipv4Net,
    /// Stable short name (`range_name`): log field and metric label.
    name: &'static str,
    description: &'static str,
    loopback: bool,
}

struct V6Range {
    net: Ipv6Net,
    name: &'static str,
    description: &'static str,
    loopback: bool,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8, name: &'static str, description: &'static str) -> V4Range {
    V4Range { net: Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len), name, description, loopback: false }
}

const fn v6(addr: u128, len: u8, name: &'static str, description: &'static str) -> V6Range {
    V6Range { net: Ipv6Net::new_assert(Ipv6Addr::from_bits(addr), len), name, description, loopback: false }
}

const V4_RANGES: [V4Range; 10] = [
    v4(0, 0, 0, 0, 8, "this-network", "\"this network\" (RFC 1122)"),
    v4(10, 0, 0, 0, 8, "private", "private (RFC 1918)"),
    v4(100, 64, 0, 0, 10, "cgnat", "shared/CGNAT space (RFC 6598), incl. Alibaba Cloud metadata 100.100.100.200"),
    V4Range { loopback: true, ..v4(127, 0, 0, 0, 8, "loopback", "loopback") },
    v4(169, 254, 0, 0, 16, "link-local", "link-local, incl. cloud metadata 169.254.169.254"),
    v4(172, 16, 0, 0, 12, "private", "private (RFC 1918)"),
    v4(192, 168, 0, 0, 16, "private", "private (RFC 1918)"),
    v4(224, 0, 0, 0, 4, "multicast", "multicast"),
    v4(240, 0, 0, 0, 4, "reserved", "reserved, incl. broadcast 255.255.255.255"),
    v4(168, 63, 129, 16, 32, "metadata", "Azure wireserver"),
];

const V6_RANGES: [V6Range; 7] = [
    V6Range { loopback: true, ..v6(1, 128, "loopback", "loopback") },
    v6(0, 128, "unspecified", "unspecified address"),
    v6(0, 96, "ipv4-compatible", "deprecated IPv4-compatible IPv6 (RFC 4291)"),
    v6(0xfe80 << 112, 10, "link-local", "link-local"),
    v6(0xfc00 << 112, 7, "unique-local", "unique local, incl. AWS metadata fd00:ec2::254"),
    v6(0xff00 << 112, 8, "multicast", "multicast"),
    v6(0x0064_ff9b_0001 << 80, 48, "nat64", "local-use NAT64 (RFC 8215)"),
];

/// Cloud metadata services inside the ranges above (AWS, GCP, Azure, Oracle
/// and OpenStack 169.254.169.254; AWS ECS task metadata 169.254.170.2;
/// Alibaba 100.100.100.200; AWS over IPv6 fd00:ec2::254): named
/// `metadata` rather than after their range, because reaching one is the
/// credential theft the ranges are there to stop.
const METADATA_V4: [Ipv4Addr; 3] =
    [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(169, 254, 170, 2), Ipv4Addr::new(100, 100, 100, 200)];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Every value `range_name` can return: a bounded set (metric labels),
/// the kernel's range classes (`agent_common::flow::range::NAMES`).
pub const RANGE_NAMES: [&str; 13] = range::NAMES;

/// `::ffff:0:0/96`: how the kernel (and our maps) key IPv4 destinations.
const MAPPED_PREFIX: u128 = 0xffff << 32;
/// `64:ff9b::/96`: the well-known NAT64 prefix (RFC 6052); a NAT64 gateway
/// forwards `64:ff9b::a.b.c.d` to IPv4 `a.b.c.d`.
const NAT64_PREFIX: u128 = 0x0064_ff9b << 96;

/// How the destination reached the listed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// The address itself is in the range.
    Direct,
    /// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) of an IPv4 range.
    Ipv4Mapped,
    /// NAT64 (`64:ff9b::a.b.c.d`) of an IPv4 range.
    Nat64,
}

/// The always-denied range a destination falls in, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedRange {
    /// The range as listed: an IPv4 range for IPv4, IPv4-mapped and NAT64
    /// destinations, else an IPv6 range.
    pub net: IpNet,
    pub description: &'static str,
    pub via: Embedding,
    /// Loopback (127/8, its mapped form, ::1): the kernel lets a workload use
    /// its own loopback, but never the host's. NAT64 forms are not loopback.
    pub loopback: bool,
}

impl DeniedRange {
    /// `CIDR_KIND_LOOPBACK` or `CIDR_KIND_DENY_RANGE`.
    pub fn kernel_kind(&self) -> u32 {
        if self.loopback { CIDR_KIND_LOOPBACK } else { CIDR_KIND_DENY_RANGE }
    }
}

impl fmt::Display for DeniedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.net, self.description)?;
        match self.via {
            Embedding::Direct => Ok(()),
            Embedding::Ipv4Mapped => f.write_str(" as IPv4-mapped IPv6"),
            Embedding::Nat64 => f.write_str(" via NAT64 64:ff9b::/96"),
        }
    }
}

/// The 16-byte form the kernel keys every destination by: IPv4 becomes
/// IPv4-mapped IPv6 (same bytes as `agent_common::v4_mapped`).
pub fn canonical(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => Ipv6Addr::from(agent_common::v4_mapped(a.octets())),
        IpAddr::V6(a) => a,
    }
}

/// A network in canonical form: IPv4 `a.b.c.d/n` becomes `::ffff:a.b.c.d/(96+n)`.
/// Host bits are cleared.
pub fn canonical_net(net: IpNet) -> Ipv6Net {
    match net {
        IpNet::V4(n) => embed(MAPPED_PREFIX, n),
        IpNet::V6(n) => n.trunc(),
    }
}

/// `prefix` (a /96) followed by the IPv4 network `n`.
fn embed(prefix: u128, n: Ipv4Net) -> Ipv6Net {
    let bits = prefix | u128::from(n.network().to_bits());
    Ipv6Net::new_assert(Ipv6Addr::from_bits(bits), 96 + n.prefix_len())
}

/// The class (`agent_common::flow::range` id) of an always-denied range
/// or host, given in its kernel form (IPv4-mapped or NAT64): the class of
/// its first address, named as `range_name` names it.
pub fn range_class(net: Ipv6Net) -> u32 {
    let listed = V4_RANGES
        .iter()
        .find(|r| embed(MAPPED_PREFIX, r.net) == net || embed(NAT64_PREFIX, r.net) == net)
        .map(|r| r.name)
        .or_else(|| V6_RANGES.iter().find(|r| r.net == net).map(|r| r.name));
    let name = listed.or_else(|| {
        // A host inside a range (the metadata services).
        let a = net.network();
        range_name(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4))
    });
    name.map_or(range::NONE, range::id_of)
}

/// Which always-denied range `ip` falls in (the most specific one, as the
/// kernel's longest-prefix match would pick), if any.
pub fn deny_reason(ip: IpAddr) -> Option<DeniedRange> {
    match ip {
        IpAddr::V4(a) => v4_reason(a, Embedding::Direct),
        IpAddr::V6(a) => {
            if let Some(a4) = a.to_ipv4_mapped() {
                return v4_reason(a4, Embedding::Ipv4Mapped);
            }
            if a.to_bits() >> 32 == NAT64_PREFIX >> 32 {
                // Low 32 bits are the IPv4 address; truncation is the point.
                return v4_reason(Ipv4Addr::from_bits(a.to_bits() as u32), Embedding::Nat64);
            }
            V6_RANGES.iter().filter(|r| r.net.contains(&a)).max_by_key(|r| r.net.prefix_len()).map(|r| DeniedRange {
                net: IpNet::V6(r.net),
                description: r.description,
                via: Embedding::Direct,
                loopback: r.loopback,
            })
        }
    }
}

fn v4_reason(a: Ipv4Addr, via: Embedding) -> Option<DeniedRange> {
    V4_RANGES.iter().filter(|r| r.net.contains(&a)).max_by_key(|r| r.net.prefix_len()).map(|r| DeniedRange {
        net: IpNet::V4(r.net),
        description: r.description,
        via,
        loopback: r.loopback && via != Embedding::Nat64,
    })
}

/// The stable short name of the always-denied range `ip` falls in
/// (`metadata`, `link-local`, `private`, `loopback`, `cgnat`, ...; one of
/// `RANGE_NAMES`), for the blocked log's `range` field and metric labels.
/// An address reached through IPv4-mapped or NAT64 IPv6 is named after the
/// IPv4 range it embeds. `None` when `ip` is in no such range.
pub fn range_name(ip: IpAddr) -> Option<&'static str> {
    let r = deny_reason(ip)?;
    let v4 = match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) if r.via == Embedding::Ipv4Mapped => a.to_ipv4_mapped(),
        // Low 32 bits are the IPv4 address; truncation is the point.
        IpAddr::V6(a) if r.via == Embedding::Nat64 => Some(Ipv4Addr::from_bits(a.to_bits() as u32)),
        IpAddr::V6(_) => None,
    };
    let metadata = match (v4, ip) {
        (Some(a), _) => METADATA_V4.contains(&a),
        (None, IpAddr::V6(a)) => a == METADATA_V6,
        (None, IpAddr::V4(_)) => false,
    };
    if metadata {
        return Some("metadata");
    }
    let name = match r.net {
        IpNet::V4(n) => V4_RANGES.iter().find(|x| x.net == n).map(|x| x.name),
        IpNet::V6(n) => V6_RANGES.iter().find(|x| x.net == n).map(|x| x.name),
    };
    Some(name.unwrap_or("other"))
}

/// True when `ip` may never be opened by DNS learning, loopback included.
/// (Only an explicit CIDR rule can open a hole in these ranges.)
pub fn is_always_denied(ip: IpAddr) -> bool {
    deny_reason(ip).is_some()
}

/// Cloud metadata services, single hosts inside always-denied ranges: in
/// the kernel as entries of their own (denied the same way), so a denial
/// is counted as `metadata`, not as the range around it. In canonical
/// form (IPv4 mapped and NAT64).
pub fn kernel_metadata_hosts() -> Vec<Ipv6Net> {
    let mut out = Vec::new();
    for v4 in METADATA_V4 {
        let n = Ipv4Net::new_assert(v4, 32);
        out.push(embed(MAPPED_PREFIX, n));
        out.push(embed(NAT64_PREFIX, n));
    }
    out.push(Ipv6Net::new_assert(METADATA_V6, 128));
    out
}

/// The always-denied ranges as canonical kernel `CIDRS` entries with their
/// kind (`CIDR_KIND_DENY_RANGE`, or `CIDR_KIND_LOOPBACK` for 127/8 as
/// IPv4-mapped and ::1). Each IPv4 range appears twice: IPv4-mapped (which
/// is also how plain IPv4 is keyed) and NAT64.
pub fn kernel_deny_entries() -> Vec<(Ipv6Net, u32)> {
    let mut out = Vec::with_capacity(V4_RANGES.len() * 2 + V6_RANGES.len());
    for r in &V4_RANGES {
        let kind = if r.loopback { CIDR_KIND_LOOPBACK } else { CIDR_KIND_DENY_RANGE };
        out.push((embed(MAPPED_PREFIX, r.net), kind));
        out.push((embed(NAT64_PREFIX, r.net), CIDR_KIND_DENY_RANGE));
    }
    for r in &V6_RANGES {
        let kind = if r.loopback { CIDR_KIND_LOOPBACK } else { CIDR_KIND_DENY_RANGE };
        out.push((r.net, kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn denied_table() {
        let denied: &[(&str, &str, Embedding, bool)] = &[
            ("169.254.169.254", "169.254.0.0/16", Embedding::Direct, false),
            ("10.1.2.3", "10.0.0.0/8", Embedding::Direct, false),
            ("100.100.100.200", "100.64.0.0/10", Embedding::Direct, false),
            ("0.0.0.0", "0.0.0.0/8", Embedding::Direct, false),
            ("172.31.255.255", "172.16.0.0/12", Embedding::Direct, false),
            ("192.168.1.1", "192.168.0.0/16", Embedding::Direct, false),
            ("224.0.0.251", "224.0.0.0/4", Embedding::Direct, false),
            ("255.255.255.255", "240.0.0.0/4", Embedding::Direct, false),
            ("168.63.129.16", "168.63.129.16/32", Embedding::Direct, false),
            ("127.0.0.1", "127.0.0.0/8", Embedding::Direct, true),
            ("::ffff:127.0.0.1", "127.0.0.0/8", Embedding::Ipv4Mapped, true),
            ("64:ff9b::127.0.0.1", "127.0.0.0/8", Embedding::Nat64, false),
            ("::ffff:169.254.169.254", "169.254.0.0/16", Embedding::Ipv4Mapped, false),
            ("64:ff9b::a9fe:a9fe", "169.254.0.0/16", Embedding::Nat64, false),
            ("64:ff9b:1::8.8.8.8", "64:ff9b:1::/48", Embedding::Direct, false),
            ("fd00:ec2::254", "fc00::/7", Embedding::Direct, false),
            ("fe80::1", "fe80::/10", Embedding::Direct, false),
            ("ff02::1", "ff00::/8", Embedding::Direct, false),
            ("::1", "::1/128", Embedding::Direct, true),
            ("::", "::/128", Embedding::Direct, false),
            ("::a9fe:a9fe", "::/96", Embedding::Direct, false),
        ];
        for (addr, net, via, loopback) in denied {
            let r = deny_reason(ip(addr)).unwrap_or_else(|| panic!("{addr} not denied"));
            assert_eq!(r.net.to_string(), *net, "{addr}");
            assert_eq!(r.via, *via, "{addr}");
            assert_eq!(r.loopback, *loopback, "{addr}");
            assert!(is_always_denied(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn public_and_documentation_not_denied() {
        for addr in [
            "8.8.8.8",
            "203.0.113.10",
            "192.0.2.1",
            "198.51.100.53",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2606:4700::1111",
            "100.63.255.255",
            "100.128.0.0",
            "168.63.129.17",
            "172.32.0.1",
        ] {
            assert_eq!(deny_reason(ip(addr)), None, "{addr}");
            assert!(!is_always_denied(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical(ip("10.1.2.3")), "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(canonical(ip("2001:db8::1")), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(canonical_net("10.0.0.0/8".parse().unwrap()).to_string(), "::ffff:10.0.0.0/104");
        assert_eq!(canonical_net("0.0.0.0/0".parse().unwrap()).to_string(), "::ffff:0.0.0.0/96");
        assert_eq!(canonical_net("2001:db8::1/32".parse().unwrap()).to_string(), "2001:db8::/32");
    }

    /// Longest-prefix match over the kernel entries, like the CIDRS trie.
    fn lpm(entries: &[(Ipv6Net, u32)], a: Ipv6Addr) -> Option<u32> {
        entries.iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|e| e.1)
    }

    #[test]
    fn kernel_entries_agree_with_deny_reason() {
        let entries = kernel_deny_entries();
        assert_eq!(entries.len(), 27);
        let mut nets: Vec<_> = entries.iter().map(|e| e.0).collect();
        nets.sort();
        nets.dedup();
        assert_eq!(nets.len(), entries.len(), "duplicate prefixes");
        for (n, _) in &entries {
            assert_eq!(*n, n.trunc(), "{n} has host bits");
        }
        let loopback: Vec<String> = entries.iter().filter(|e| e.1 == CIDR_KIND_LOOPBACK).map(|e| e.0.to_string()).collect();
        assert_eq!(loopback, ["::ffff:127.0.0.0/104", "::1/128"]);
        assert!(entries.contains(&("64:ff9b::7f00:0/104".parse().unwrap(), CIDR_KIND_DENY_RANGE)));
        assert!(entries.contains(&("::ffff:168.63.129.16/128".parse().unwrap(), CIDR_KIND_DENY_RANGE)));
        for addr in [
            "169.254.169.254",
            "10.1.2.3",
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
            "::1",
            "::",
            "::2",
            "8.8.8.8",
            "2001:db8::1",
            "64:ff9b::808:808",
            "255.255.255.255",
            "64:ff9b:1:2::1",
            "ff02::1",
        ] {
            let a = ip(addr);
            let want = deny_reason(a).map(|r| r.kernel_kind());
            assert_eq!(lpm(&entries, canonical(a)), want, "{addr}");
        }
    }

    #[test]
    fn every_denied_address_has_a_stable_short_name() {
        let want = [
            ("169.254.169.254", "metadata"),
            ("::ffff:169.254.169.254", "metadata"),
            ("64:ff9b::a9fe:a9fe", "metadata"),
            ("169.254.170.2", "metadata"),
            ("100.100.100.200", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("168.63.129.16", "metadata"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("::ffff:10.0.0.1", "private"),
            ("fd00::1", "unique-local"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("100.64.0.1", "cgnat"),
            ("224.0.0.251", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("0.0.0.0", "this-network"),
            ("::", "unspecified"),
            ("::a9fe:a9fe", "ipv4-compatible"),
            ("64:ff9b:1::8.8.8.8", "nat64"),
        ];
        for (addr, name) in want {
            assert_eq!(range_name(ip(addr)), Some(name), "{addr}");
            assert!(RANGE_NAMES.contains(&name), "{name} listed");
        }
        for addr in ["8.8.8.8", "203.0.113.10", "2001:db8::1", "64:ff9b::8.8.8.8"] {
            assert_eq!(range_name(ip(addr)), None, "{addr}");
        }
        // Every range has a listed name.
        for n in V4_RANGES.iter().map(|r| r.name).chain(V6_RANGES.iter().map(|r| r.name)) {
            assert!(RANGE_NAMES.contains(&n), "{n}");
        }
    }

    #[test]
    fn display_names_the_range() {
        let r = deny_reason(ip("64:ff9b::a9fe:a9fe")).unwrap();
        assert_eq!(r.to_string(), "169.254.0.0/16 (link-local, incl. cloud metadata 169.254.169.254) via NAT64 64:ff9b::/96");
    }
}
