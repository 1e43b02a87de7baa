//! Tests of `packet`: framing round trips, checksums, malformed packets.

use std::net::{IpAddr, SocketAddr};

use etherparse::UdpHeader;
use hickory_proto::rr::RecordType;

use super::testing::*;
use super::{DnsError, build_udp, parse_udp};

fn dns_payload() -> Vec<u8> {
    build_answer("www.example.com", RecordType::A, vec![a("www.example.com", [93, 184, 216, 34], 300)])
}

/// RFC 1071 ones'-complement sum, written independently of etherparse.
fn ones_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn assert_ipv4_header_checksum(pkt: &[u8]) {
    let ihl = usize::from(pkt[0] & 0xf) * 4;
    assert_eq!(ones_sum(&[&pkt[..ihl]]), 0xffff, "IPv4 header checksum wrong");
    assert_ne!(&pkt[10..12], &[0, 0], "IPv4 header checksum not filled in");
}

/// Verifies the UDP checksum over the pseudo header (sum must be all ones).
fn assert_udp_checksum(pkt: &[u8]) {
    let (src, dst, udp): (&[u8], &[u8], &[u8]) = match pkt[0] >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0xf) * 4;
            (&pkt[12..16], &pkt[16..20], &pkt[ihl..])
        }
        6 => (&pkt[8..24], &pkt[24..40], &pkt[40..]),
        v => panic!("version {v}"),
    };
    let len = (udp.len() as u16).to_be_bytes();
    assert_eq!(&udp[4..6], &len, "UDP length field");
    let pseudo_tail = [0, 17, len[0], len[1]];
    assert_ne!(&udp[6..8], &[0, 0], "UDP checksum missing");
    assert_eq!(ones_sum(&[src, dst, &pseudo_tail, udp]), 0xffff, "UDP checksum wrong");
}

#[test]
fn round_trip_v4() {
    let payload = dns_payload();
    let pkt = packet_v4(&payload);
    assert_eq!(pkt.len(), 20 + 8 + payload.len());
    assert_eq!(pkt[0], 0x45);
    assert_eq!(pkt[8], 64, "TTL");
    assert_eq!(pkt[9], 17, "protocol");
    let udp = parse_udp(&pkt).expect("parse");
    assert_eq!(udp.src, addr(RESOLVER_V4));
    assert_eq!(udp.dst, addr(WORKLOAD_V4));
    assert_eq!(udp.payload, payload.as_slice());
}

#[test]
fn round_trip_v6() {
    let payload = dns_payload();
    let pkt = packet_v6(&payload);
    assert_eq!(pkt.len(), 40 + 8 + payload.len());
    assert_eq!(pkt[0] >> 4, 6);
    assert_eq!(pkt[6], 17, "next header");
    assert_eq!(pkt[7], 64, "hop limit");
    let udp = parse_udp(&pkt).expect("parse");
    assert_eq!(udp.src, addr(RESOLVER_V6));
    assert_eq!(udp.dst, addr(WORKLOAD_V6));
    assert_eq!(udp.payload, payload.as_slice());
}

#[test]
fn round_trip_empty_and_odd_payloads() {
    for len in [0usize, 1, 2, 3, 511, 512, 513] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xa5).collect();
        for pkt in [packet_v4(&payload), packet_v6(&payload)] {
            assert_eq!(parse_udp(&pkt).expect("parse").payload, payload.as_slice());
            assert_udp_checksum(&pkt);
        }
    }
}

#[test]
fn checksums_are_correct() {
    let payload = dns_payload();
    let v4 = packet_v4(&payload);
    assert_ipv4_header_checksum(&v4);
    assert_udp_checksum(&v4);
    let v6 = packet_v6(&payload);
    assert_udp_checksum(&v6);

    // Cross-check against etherparse's own computation of the same fields.
    let (ip, _) = etherparse::Ipv4Header::from_slice(&v4).expect("v4 header");
    assert_eq!(ip.calc_header_checksum(), ip.header_checksum);
    let (udp, _) = UdpHeader::from_slice(&v4[20..]).expect("udp");
    assert_eq!(udp.calc_checksum_ipv4(&ip, &payload).expect("sum"), udp.checksum);
    let (ip6, _) = etherparse::Ipv6Header::from_slice(&v6).expect("v6 header");
    let (udp6, _) = UdpHeader::from_slice(&v6[40..]).expect("udp6");
    assert_eq!(udp6.calc_checksum_ipv6(&ip6, &payload).expect("sum"), udp6.checksum);
}

#[test]
fn garbage_udp_checksum_parses_and_rebuild_fixes_it() {
    let payload = dns_payload();
    for good in [packet_v4(&payload), packet_v6(&payload)] {
        let udp_off = if good[0] >> 4 == 4 { 20 } else { 40 };
        let mut bad = good.clone();
        // What a veth with checksum offload hands over: only the pseudo
        // header sum, or anything at all.
        bad[udp_off + 6] ^= 0x5a;
        bad[udp_off + 7] ^= 0xc3;
        let parsed = parse_udp(&bad).expect("bad checksum must still parse");
        assert_eq!(parsed.payload, payload.as_slice());
        let ttl = if good[0] >> 4 == 4 { bad[8] } else { bad[7] };
        let rebuilt = build_udp(parsed.src, parsed.dst, parsed.payload, ttl).expect("rebuild");
        assert_udp_checksum(&rebuilt);
        assert_eq!(rebuilt, good);
    }
}

#[test]
fn family_mismatch_is_an_error() {
    let err = build_udp(addr(RESOLVER_V4), addr(WORKLOAD_V6), b"x", 64).unwrap_err();
    assert!(matches!(err, DnsError::FamilyMismatch { .. }), "{err}");
    let err = build_udp(addr(RESOLVER_V6), addr(WORKLOAD_V4), b"x", 64).unwrap_err();
    assert!(matches!(err, DnsError::FamilyMismatch { .. }), "{err}");
}

#[test]
fn payload_size_limits() {
    let max_v4 = vec![0u8; 65535 - 28];
    let pkt = packet_v4(&max_v4);
    assert_eq!(pkt.len(), 65535);
    assert_eq!(parse_udp(&pkt).expect("max v4").payload.len(), max_v4.len());
    let err = build_udp(addr(RESOLVER_V4), addr(WORKLOAD_V4), &[0u8; 65535 - 27], 64).unwrap_err();
    assert!(matches!(err, DnsError::PayloadTooLarge { .. }), "{err}");

    let max_v6 = vec![0u8; 65535 - 8];
    let pkt = packet_v6(&max_v6);
    assert_eq!(parse_udp(&pkt).expect("max v6").payload.len(), max_v6.len());
    let err = build_udp(addr(RESOLVER_V6), addr(WORKLOAD_V6), &[0u8; 65535 - 7], 64).unwrap_err();
    assert!(matches!(err, DnsError::PayloadTooLarge { .. }), "{err}");
}

#[test]
fn wrong_protocol_is_rejected() {
    let mut v4 = packet_v4(&dns_payload());
    v4[9] = 6; // TCP
    assert!(matches!(parse_udp(&v4), Err(DnsError::NotUdp { protocol: 6 })));
    let mut v6 = packet_v6(&dns_payload());
    v6[6] = 6;
    assert!(matches!(parse_udp(&v6), Err(DnsError::NotUdp { protocol: 6 })));
}

#[test]
fn ipv4_fragments_are_rejected() {
    let pkt = packet_v4(&dns_payload());
    let mut more = pkt.clone();
    more[6] |= 0x20; // MF
    let err = parse_udp(&more).unwrap_err();
    assert!(matches!(err, DnsError::Fragment), "{err}");
    assert!(err.to_string().contains("fragment"));
    let mut later = pkt;
    later[6] &= !0x40; // DF off
    later[7] = 1; // offset 8 bytes
    assert!(matches!(parse_udp(&later), Err(DnsError::Fragment)));
}

/// Inserts an 8-byte IPv6 extension header of type `ext_type` after the
/// fixed header of a built IPv6 packet.
fn with_v6_ext(pkt: &[u8], ext_type: u8, body: [u8; 6]) -> Vec<u8> {
    let mut out = pkt[..40].to_vec();
    let payload_len = u16::from_be_bytes([pkt[4], pkt[5]]) + 8;
    out[4..6].copy_from_slice(&payload_len.to_be_bytes());
    out[6] = ext_type;
    out.extend_from_slice(&[17, 0]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&pkt[40..]);
    out
}

#[test]
fn ipv6_hop_by_hop_is_skipped() {
    let payload = dns_payload();
    // Hop-by-hop with one PadN option filling the 6 bytes.
    let pkt = with_v6_ext(&packet_v6(&payload), 0, [1, 4, 0, 0, 0, 0]);
    let udp = parse_udp(&pkt).expect("hop-by-hop accepted");
    assert_eq!(udp.payload, payload.as_slice());
    assert_eq!(udp.dst, addr(WORKLOAD_V6));
}

#[test]
fn ipv6_fragments_are_rejected() {
    let pkt = packet_v6(&dns_payload());
    // Fragment header: offset 0, M=1 (first fragment).
    let first = with_v6_ext(&pkt, 44, [0, 1, 0, 0, 0, 7]);
    assert!(matches!(parse_udp(&first), Err(DnsError::Fragment)));
    // Offset 1 (x8 bytes), M=0 (last fragment).
    let last = with_v6_ext(&pkt, 44, [0, 8, 0, 0, 0, 7]);
    assert!(matches!(parse_udp(&last), Err(DnsError::Fragment)));
}

#[test]
fn ipv4_options_are_skipped() {
    let payload = dns_payload();
    let pkt = packet_v4(&payload);
    let mut opt = pkt[..20].to_vec();
    opt.extend_from_slice(&[1, 1, 1, 1]); // four NOP options
    opt.extend_from_slice(&pkt[20..]);
    opt[0] = 0x46;
    let total = (opt.len() as u16).to_be_bytes();
    opt[2..4].copy_from_slice(&total);
    let udp = parse_udp(&opt).expect("options accepted");
    assert_eq!(udp.payload, payload.as_slice());
    assert_eq!(udp.src, addr(RESOLVER_V4));
}

#[test]
fn inconsistent_udp_length_is_rejected() {
    for pkt in [packet_v4(&dns_payload()), packet_v6(&dns_payload())] {
        let off = if pkt[0] >> 4 == 4 { 20 } else { 40 };
        let len = u16::from_be_bytes([pkt[off + 4], pkt[off + 5]]);
        for bad_len in [0, 7, 8, len - 1, len + 1, u16::MAX] {
            let mut bad = pkt.clone();
            bad[off + 4..off + 6].copy_from_slice(&bad_len.to_be_bytes());
            let err = parse_udp(&bad).unwrap_err();
            assert!(matches!(err, DnsError::UdpLengthMismatch { .. }), "len {bad_len}: {err}");
        }
    }
}

#[test]
fn ip_payload_shorter_than_udp_header_is_rejected() {
    let pkt = packet_v4(b"");
    let mut short = pkt[..24].to_vec();
    short[2..4].copy_from_slice(&24u16.to_be_bytes());
    assert!(matches!(parse_udp(&short), Err(DnsError::UdpTruncated { len: 4 })));
}

#[test]
fn trailing_bytes_after_ip_packet_are_rejected() {
    for mut pkt in [packet_v4(&dns_payload()), packet_v6(&dns_payload())] {
        pkt.push(0);
        assert!(matches!(parse_udp(&pkt), Err(DnsError::IpLengthMismatch { .. })));
    }
}

#[test]
fn ipv6_jumbogram_is_rejected() {
    let mut pkt = packet_v6(&dns_payload());
    pkt[4] = 0;
    pkt[5] = 0;
    assert!(matches!(parse_udp(&pkt), Err(DnsError::Jumbogram)));
}

#[test]
fn unknown_ip_version_and_empty_input_are_rejected() {
    let mut pkt = packet_v4(&dns_payload());
    pkt[0] = 0x55;
    assert!(matches!(parse_udp(&pkt), Err(DnsError::Ip(_))));
    assert!(matches!(parse_udp(&[]), Err(DnsError::Ip(_))));
}

#[test]
fn every_truncation_is_an_error() {
    for pkt in [packet_v4(&dns_payload()), packet_v6(&dns_payload())] {
        for cut in 0..pkt.len() {
            assert!(parse_udp(&pkt[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        assert!(parse_udp(&pkt).is_ok());
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for i in 0..20_000 {
        let len = rng.below(120);
        let mut bytes = rng.bytes(len);
        // Steer half the inputs past the version check.
        if let Some(first) = bytes.first_mut() {
            match i % 4 {
                0 => *first = 0x45,
                1 => *first = 0x60,
                _ => {}
            }
        }
        if let Ok(udp) = parse_udp(&bytes) {
            accepted += 1;
            assert!(udp.payload.len() <= bytes.len());
            assert!(matches!(
                (udp.src, udp.dst),
                (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_))
            ));
        }
    }
    // Random bytes essentially never have every length field consistent.
    assert!(accepted < 10, "{accepted} random inputs accepted");
}

#[test]
fn mutated_packets_never_panic() {
    let mut rng = Rng(42);
    let payload = dns_payload();
    for base in [packet_v4(&payload), packet_v6(&payload)] {
        for _ in 0..5_000 {
            let mut pkt = base.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(pkt.len());
                pkt[at] = rng.next_u64() as u8;
            }
            if let Ok(udp) = parse_udp(&pkt) {
                assert!(matches!(udp.src.ip(), IpAddr::V4(_) | IpAddr::V6(_)));
            }
        }
    }
}
