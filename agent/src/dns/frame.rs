//! Ethernet framing of DNS taken off a pod's veth (`DNS_KIND_VETH_QUERY`):
//! the query as the pod sent it, and the answer written back onto the
//! veth as if the resolver had sent it.
//!
//! The frame is the pod's own making (a gVisor netstack, a packet socket):
//! everything is checked, nothing trusted. Ethernet padding (a sender may
//! pad to the 60-byte minimum) is cut at the length the IP header declares;
//! the IP and UDP checks are `parse_udp`'s.

use std::net::SocketAddr;

use etherparse::{IpSlice, Ipv6Header};

use super::{DnsError, UdpPacket, build_udp, parse_udp};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A UDP query from a pod, with the link addresses to answer it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameQuery<'a> {
    /// The pod's interface (the frame's source).
    pub pod_mac: [u8; 6],
    /// What the pod sent it to (its gateway: the host side of the veth).
    pub gateway_mac: [u8; 6],
    pub client: SocketAddr,
    pub resolver: SocketAddr,
    /// The DNS message.
    pub message: &'a [u8],
}

/// Parses an Ethernet II frame carrying one unfragmented UDP datagram.
pub fn parse_frame_query(frame: &[u8]) -> Result<FrameQuery<'_>, DnsError> {
    let not_ip = |ether_type| DnsError::NotIpFrame { len: frame.len(), ether_type };
    let header = frame.get(..ETH_HLEN).ok_or(not_ip(0))?;
    let ether_type = u16::from_be_bytes([header[12], header[13]]);
    if ether_type != ETH_P_IP && ether_type != ETH_P_IPV6 {
        return Err(not_ip(ether_type));
    }
    let l3 = &frame[ETH_HLEN..];
    let ip = IpSlice::from_slice(l3)?;
    let declared = match &ip {
        IpSlice::Ipv4(v4) => usize::from(v4.header().total_len()),
        IpSlice::Ipv6(v6) => Ipv6Header::LEN + usize::from(v6.header().payload_length()),
    };
    // Padding after the IP packet is cut; a packet longer than the frame
    // is refused by `parse_udp`.
    let l3 = l3.get(..declared).unwrap_or(l3);
    let UdpPacket { src, dst, payload } = parse_udp(l3)?;
    let mac = |at: usize| -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&header[at..at + 6]);
        m
    };
    Ok(FrameQuery { pod_mac: mac(6), gateway_mac: mac(0), client: src, resolver: dst, message: payload })
}

/// The frame that carries `answer` to the pod that sent `q`: from the
/// resolver's address and port to the client's, from the gateway's MAC to
/// the pod's, with fresh checksums.
pub fn build_frame(q: &FrameQuery<'_>, answer: &[u8], ttl: u8) -> Result<Vec<u8>, DnsError> {
    let packet = build_udp(q.resolver, q.client, answer, ttl)?;
    let ether_type = if q.client.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
    let mut frame = Vec::with_capacity(ETH_HLEN + packet.len());
    frame.extend_from_slice(&q.pod_mac);
    frame.extend_from_slice(&q.gateway_mac);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(&packet);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const POD: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn frame(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let eth = PacketBuilder::ethernet2(POD, GW);
        let ip = match (src.ip(), dst.ip()) {
            (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let mut out = Vec::new();
        ip.udp(src.port(), dst.port()).write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn a_query_frame_parses_and_its_answer_goes_back_the_other_way() {
        for (client, resolver) in [("198.18.1.2:40000", "198.51.100.53:53"), ("[2001:2::2]:40000", "[2001:db8:53::53]:53")] {
            let f = frame(client, resolver, b"query bytes");
            let q = parse_frame_query(&f).unwrap();
            assert_eq!((q.pod_mac, q.gateway_mac), (POD, GW));
            assert_eq!((q.client.to_string(), q.resolver.to_string()), (client.to_string(), resolver.to_string()));
            assert_eq!(q.message, b"query bytes");

            let back = build_frame(&q, b"answer bytes", 64).unwrap();
            assert_eq!(&back[..6], &POD, "to the pod");
            assert_eq!(&back[6..12], &GW, "from its gateway");
            let a = parse_udp(&back[14..]).unwrap();
            assert_eq!((a.src, a.dst, a.payload), (q.resolver, q.client, &b"answer bytes"[..]));
        }
    }

    #[test]
    fn padding_is_cut_and_broken_frames_are_refused() {
        let mut f = frame("198.18.1.2:40000", "198.51.100.53:53", b"q");
        f.resize(60, 0);
        assert_eq!(parse_frame_query(&f).unwrap().message, b"q");

        assert!(matches!(parse_frame_query(&f[..10]), Err(DnsError::NotIpFrame { .. })));
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(matches!(parse_frame_query(&arp), Err(DnsError::NotIpFrame { ether_type: 0x0806, .. })));
        let short = frame("198.18.1.2:40000", "198.51.100.53:53", b"query");
        assert!(parse_frame_query(&short[..short.len() - 2]).is_err(), "IP length beyond the frame");
        let mut tcp = short;
        tcp[14 + 9] = 6;
        assert!(parse_frame_query(&tcp).is_err());
    }
}
