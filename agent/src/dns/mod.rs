//! DNS answer parsing (hickory-proto) and packet framing (etherparse).
//!
//! The kernel holds back every DNS answer addressed to a workload and hands
//! the raw IP packet to the agent (`agent_common::DnsHeldPacket`). This module
//! is the pure, I/O-free part of that path:
//!
//! * [`packet`]: split a held IPv4/IPv6 packet into addresses and UDP payload
//!   ([`parse_udp`]) and build a fresh IP + UDP packet with correct checksums
//!   for re-injection ([`build_udp`]).
//! * [`answer`]: decode the DNS message ([`parse_message`]) and extract the
//!   addresses a workload may connect to ([`learnable`]).
//!
//! Everything here treats its input as hostile: the bytes come from the
//! network, and even a trusted resolver relays records chosen by whoever runs
//! the queried zone. Bad input is an `Err`, never a panic.

pub mod answer;
pub mod frame;
pub mod packet;
pub mod query;
pub mod rewrite;
pub mod stream;

#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests_answer;
#[cfg(test)]
mod tests_packet;
#[cfg(test)]
mod tests_robust;

pub use answer::{Learned, LearnedAddr, learnable, name_to_string, parse_message, question, transaction_id};
pub use frame::{FrameQuery, build_frame, parse_frame_query};
pub use packet::{UdpPacket, build_udp, parse_udp};
pub use query::{Suspicion, parse_query, refusal, suspicion};
pub use rewrite::strip_addresses;

use std::net::SocketAddr;

/// Everything that can go wrong between a held packet and learned addresses.
///
/// Every variant means "do not learn from this packet"; whether the packet is
/// then dropped or re-injected anyway is the caller's decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// Not a standard query with exactly one question.
    #[error("not a standard query with one question")]
    NotAQuery,
    /// The IP header (or an extension header) is truncated, has an unknown
    /// version or a length field that does not fit the buffer.
    #[error("malformed IP packet: {0}")]
    Ip(#[from] etherparse::err::ip::SliceError),

    /// The kernel hands over exactly one IP packet; bytes after the length
    /// the IP header declares mean the capture and the header disagree.
    #[error("IP header declares {declared} bytes but the buffer holds {actual}")]
    IpLengthMismatch { declared: usize, actual: usize },

    /// IPv6 payload length 0 announces a jumbogram; DNS over UDP never needs
    /// one, and the real length would hide in a hop-by-hop option.
    #[error("IPv6 payload length is 0 (jumbogram), not a DNS answer")]
    Jumbogram,

    /// Only the first fragment carries the UDP header, and none carries the
    /// whole DNS message, so a fragment cannot be parsed as DNS.
    #[error("IP packet is a fragment; a fragment cannot be parsed as a DNS message")]
    Fragment,

    #[error("IP payload is protocol {protocol}, not UDP (17)")]
    NotUdp { protocol: u8 },

    #[error("UDP header truncated: {len} bytes of IP payload, need 8")]
    UdpTruncated { len: usize },

    /// The UDP length field must cover exactly the IP payload: a shorter
    /// value would leave unchecked trailing bytes, a longer one reads past
    /// the packet. 0 (jumbogram) is rejected here as well.
    #[error("UDP length field is {udp_len} but the IP payload is {ip_payload_len} bytes")]
    UdpLengthMismatch { udp_len: usize, ip_payload_len: usize },

    #[error("source {src} and destination {dst} are not the same address family")]
    FamilyMismatch { src: SocketAddr, dst: SocketAddr },

    #[error("UDP payload of {len} bytes does not fit an IP packet (max {max})")]
    PayloadTooLarge { len: usize, max: usize },

    #[error("malformed DNS message: {0}")]
    Dns(#[from] hickory_proto::serialize::binary::DecodeError),

    /// A DNS message has no padding outside its records; extra bytes mean a
    /// miscounted section or smuggled data.
    #[error("{extra} bytes of trailing garbage after the DNS message")]
    DnsTrailingBytes { extra: usize },

    /// A frame taken off a pod's veth must be Ethernet II carrying IPv4 or
    /// IPv6 (no VLAN tag: the veth programs parse none either).
    #[error("not an Ethernet II frame with an IP packet ({len} bytes, type {ether_type:#06x})")]
    NotIpFrame { len: usize, ether_type: u16 },

    #[error("CNAME loop: {name} is reached twice")]
    CnameLoop { name: String },

    #[error("CNAME chain longer than {max}")]
    CnameChainTooLong { max: usize },

    /// RFC 2181 section 10.1: an alias has exactly one CNAME. Two different
    /// targets leave it ambiguous which chain the resolver meant.
    #[error("{name} has more than one CNAME target")]
    CnameConflict { name: String },
}
