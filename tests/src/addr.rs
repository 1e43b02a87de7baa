//! Every address the bench uses, in one place.
//!
//! "Public" hosts use documentation ranges (RFC 5737 / RFC 3849); pod and
//! inet links use RFC 2544 benchmarking space. Deny targets (metadata,
//! cluster-internal) are *also* hosts inside the bench's own "inet"
//! namespace, so a failed enforcement still keeps the packet on this machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// API host (`api.example.test`, `api.openai.com`).
pub const API_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const API_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// Another allowed-looking public host (`other.example.test`).
pub const OTHER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x20);

/// The bench's trusted resolver (dnsmasq); pods' resolv.conf points here.
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
/// A "rogue" resolver a pod might try to bypass policy with (same dnsmasq).
pub const ROGUE_DNS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
/// The misbehaving resolver (`servers/baddns.py`, UDP 53 unless
/// `bad_dns_port`), started only
/// with [`crate::BenchBuilder::bad_dns`]. Inside the 198.51.100.0/24 AnyIP
/// range, so no extra address or route is needed (it is also
/// `race-307.test`'s address, which only hostd's TCP ports serve).
pub const BAD_DNS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 54);
/// Its IPv6 address, with [`crate::BenchBuilder::bad_dns_v6`] (in an AnyIP
/// range too).
pub const BAD_DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x54);

/// Deny targets: cloud metadata (v4 and AWS's v6), a cluster service IP,
/// and Alibaba's metadata address.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
pub const CLUSTER_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const ALIBABA_METADATA_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

/// Wildcard-policy test hosts (see [`crate::dns::default_records`]).
pub const WILD_A_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 31); // a.wild.test
pub const WILD_BC_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 32); // b.c.wild.test
pub const WILD_APEX_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 33); // wild.test
pub const DEEP_X_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 41); // x.deep.test
pub const DEEP_YZ_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 42); // y.z.deep.test

/// Ranges in which *every* address is a live host in inet (AnyIP local routes).
pub const ANYIP_V4: [(Ipv4Addr, u8); 3] =
    [(Ipv4Addr::new(192, 0, 2, 0), 24), (Ipv4Addr::new(198, 51, 100, 0), 24), (Ipv4Addr::new(203, 0, 113, 0), 24)];
pub const ANYIP_V6: [(Ipv6Addr, u8); 2] =
    [(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 64), (Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0), 116)];

/// Host addresses put on inet's `lo` (besides the AnyIP ranges), so they can
/// be bound explicitly (dnsmasq) and serve as deny targets.
pub const INET_HOSTS: [IpAddr; 11] = [
    IpAddr::V4(API_V4),
    IpAddr::V4(OTHER_V4),
    IpAddr::V4(DNS_V4),
    IpAddr::V4(ROGUE_DNS_V4),
    IpAddr::V4(METADATA_V4),
    IpAddr::V4(CLUSTER_V4),
    IpAddr::V4(ALIBABA_METADATA_V4),
    IpAddr::V6(API_V6),
    IpAddr::V6(OTHER_V6),
    IpAddr::V6(DNS_V6),
    IpAddr::V6(METADATA_V6),
];

/// TCP ports hostd answers HTTP on, and its UDP echo port.
pub const TCP_PORTS: [u16; 4] = [80, 443, 8080, 8443];
pub const UDP_ECHO_PORT: u16 = 9999;
/// hostd's TCP echo port (a connection that stays open, answering every
/// line), only with [`crate::BenchBuilder::tcp_echo`].
pub const TCP_ECHO_PORT: u16 = 7;

/// node ↔ inet link.
pub const NODE_UPLINK_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const INET_LINK_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
pub const NODE_UPLINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
pub const INET_LINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2);
/// All pod links, as routed back from inet to node.
pub const POD_LINKS_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
pub const POD_LINKS_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0xff00, 0, 0, 0, 0, 0), 40);

/// Pod number `i` (1-based, ≤ [`MAX_PODS`]): its own address on `eth0`.
pub fn pod_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i, 2)
}
pub fn pod_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff00 | u16::from(i), 0, 0, 0, 0, 2)
}
/// The node side of pod `i`'s veth: the pod's default gateway.
pub fn pod_gw_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, i, 1)
}
pub fn pod_gw_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff00 | u16::from(i), 0, 0, 0, 0, 1)
}
/// Pod link numbers stay below 255 (0xffff is the inet link's v6 prefix).
pub const MAX_PODS: usize = 254;
