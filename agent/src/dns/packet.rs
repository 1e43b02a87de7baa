//! IPv4/IPv6 + UDP framing of held DNS answers (etherparse).
//!
//! Parsing is strict on lengths and lax on checksums: a packet held in
//! `cgroup_skb/ingress` after crossing a veth may carry a partial UDP
//! checksum (checksum offload), so the captured checksum says nothing, while
//! inconsistent length fields always mean a broken or hostile packet.
//! [`build_udp`] therefore always computes fresh checksums.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, IpSlice, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader, ip_number};

use super::DnsError;

/// Largest UDP payload of an IPv4 packet without options: the 16-bit total
/// length covers the 20-byte IP header and the 8-byte UDP header.
const MAX_PAYLOAD_V4: usize = u16::MAX as usize - Ipv4Header::MIN_LEN - UdpHeader::LEN;
/// Largest UDP payload of an IPv6 packet that is not a jumbogram: the 16-bit
/// payload length and the UDP length both cover the UDP header.
const MAX_PAYLOAD_V6: usize = u16::MAX as usize - UdpHeader::LEN;

/// Addresses and payload of one UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Exactly the bytes the UDP length field covers, minus the UDP header.
    pub payload: &'a [u8],
}

/// Parses a complete IPv4 or IPv6 packet (starting at the IP header) that
/// must carry one unfragmented UDP datagram.
///
/// IPv6 extension headers that etherparse understands (hop-by-hop, routing,
/// destination options, authentication) are skipped; fragments of either
/// family are rejected. Checksums are not verified (see the module docs).
pub fn parse_udp(ip_packet: &[u8]) -> Result<UdpPacket<'_>, DnsError> {
    let ip = IpSlice::from_slice(ip_packet)?;

    // etherparse accepts a buffer longer than the IP length (it would be
    // Ethernet padding on a wire); the kernel trims the skb to the IP length
    // before cgroup ingress, so a mismatch here is never legitimate.
    let declared = match &ip {
        IpSlice::Ipv4(v4) => usize::from(v4.header().total_len()),
        IpSlice::Ipv6(v6) => {
            let payload_len = v6.header().payload_length();
            // etherparse falls back to the buffer length for 0; refuse to
            // guess instead.
            if payload_len == 0 {
                return Err(DnsError::Jumbogram);
            }
            Ipv6Header::LEN + usize::from(payload_len)
        }
    };
    if declared != ip_packet.len() {
        return Err(DnsError::IpLengthMismatch { declared, actual: ip_packet.len() });
    }

    // Checked before the protocol: a non-first fragment still says "UDP" but
    // starts in the middle of the datagram.
    if ip.is_fragmenting_payload() {
        return Err(DnsError::Fragment);
    }
    let ip_payload = ip.payload();
    if ip_payload.ip_number != ip_number::UDP {
        return Err(DnsError::NotUdp { protocol: ip_payload.ip_number.0 });
    }

    let udp_bytes = ip_payload.payload;
    let (udp, _) = UdpHeader::from_slice(udp_bytes).map_err(|_| DnsError::UdpTruncated { len: udp_bytes.len() })?;
    let udp_len = usize::from(udp.length);
    if udp_len != udp_bytes.len() {
        return Err(DnsError::UdpLengthMismatch { udp_len, ip_payload_len: udp_bytes.len() });
    }
    // Cannot fail: udp_len == udp_bytes.len() >= UdpHeader::LEN (from_slice
    // succeeded), but `get` keeps this path panic-free regardless.
    let payload = udp_bytes.get(UdpHeader::LEN..udp_len).ok_or(DnsError::UdpTruncated { len: udp_bytes.len() })?;

    Ok(UdpPacket {
        src: SocketAddr::new(ip.source_addr(), udp.source_port),
        dst: SocketAddr::new(ip.destination_addr(), udp.destination_port),
        payload,
    })
}

/// Builds a complete IPv4 or IPv6 + UDP packet carrying `payload`, with a
/// correct IPv4 header checksum and UDP checksum (mandatory for IPv6), ready
/// for a raw socket with `IP_HDRINCL` / `IPV6_HDRINCL`.
///
/// The headers are minimal: no IPv4 options or IPv6 extension headers,
/// DSCP/ECN, flow label and IPv4 identification 0, IPv4 DF set (a DNS answer
/// re-injected on the same host must not be fragmented). Scope id and flow
/// info of IPv6 socket addresses are ignored.
pub fn build_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8], ttl_or_hop_limit: u8) -> Result<Vec<u8>, DnsError> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let udp_len = udp_len(payload, MAX_PAYLOAD_V4)?;
            let mut ip = Ipv4Header::new(udp_len, ttl_or_hop_limit, ip_number::UDP, s.octets(), d.octets())
                .map_err(|_| too_large(payload, MAX_PAYLOAD_V4))?;
            ip.header_checksum = ip.calc_header_checksum();
            let udp = UdpHeader::with_ipv4_checksum(src.port(), dst.port(), &ip, payload)
                .map_err(|_| too_large(payload, MAX_PAYLOAD_V4))?;
            Ok(assemble(&ip.to_bytes(), &udp, payload))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let udp_len = udp_len(payload, MAX_PAYLOAD_V6)?;
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: udp_len,
                next_header: IpNumber::UDP,
                hop_limit: ttl_or_hop_limit,
                source: s.octets(),
                destination: d.octets(),
            };
            let udp = UdpHeader::with_ipv6_checksum(src.port(), dst.port(), &ip, payload)
                .map_err(|_| too_large(payload, MAX_PAYLOAD_V6))?;
            Ok(assemble(&ip.to_bytes(), &udp, payload))
        }
        _ => Err(DnsError::FamilyMismatch { src, dst }),
    }
}

/// UDP length (header + payload) as the 16-bit field value, if it fits `max`.
fn udp_len(payload: &[u8], max: usize) -> Result<u16, DnsError> {
    if payload.len() > max {
        return Err(too_large(payload, max));
    }
    u16::try_from(UdpHeader::LEN + payload.len()).map_err(|_| too_large(payload, max))
}

fn too_large(payload: &[u8], max: usize) -> DnsError {
    DnsError::PayloadTooLarge { len: payload.len(), max }
}

fn assemble(ip_header: &[u8], udp: &UdpHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ip_header.len() + UdpHeader::LEN + payload.len());
    out.extend_from_slice(ip_header);
    out.extend_from_slice(&udp.to_bytes());
    out.extend_from_slice(payload);
    out
}
