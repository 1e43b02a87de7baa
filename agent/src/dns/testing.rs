//! Builders for real DNS answers, for this module's tests and any other test
//! in the crate that needs a held answer (e.g. the hold/re-inject loop).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::build_udp;

/// A fully qualified name, as it would come off the wire.
pub fn name(s: &str) -> Name {
    let mut n = Name::from_ascii(s).expect("test name");
    n.set_fqdn(true);
    n
}

pub fn a(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

pub fn aaaa(owner: &str, ip: Ipv6Addr, ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip)))
}

pub fn cname(owner: &str, target: &str, ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

/// A NOERROR response to one `qname`/`qtype` question with these answers.
pub fn response(id: u16, qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
    let mut msg = Message::new(id, MessageType::Response, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.recursion_available = true;
    msg.metadata.response_code = ResponseCode::NoError;
    msg.add_query(Query::query(name(qname), qtype));
    msg.add_answers(answers);
    msg
}

/// Wire bytes of [`response`].
pub fn build_answer(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Vec<u8> {
    response(0x1234, qname, qtype, answers).to_vec().expect("encode answer")
}

pub const RESOLVER_V4: &str = "10.96.0.10:53";
pub const WORKLOAD_V4: &str = "10.244.1.7:41234";
pub const RESOLVER_V6: &str = "[fd00::a]:53";
pub const WORKLOAD_V6: &str = "[fd00:1::7]:41234";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

/// A complete IPv4 packet carrying `payload` from the resolver to the workload.
pub fn packet_v4(payload: &[u8]) -> Vec<u8> {
    build_udp(addr(RESOLVER_V4), addr(WORKLOAD_V4), payload, 64).expect("build v4")
}

/// A complete IPv6 packet carrying `payload` from the resolver to the workload.
pub fn packet_v6(payload: &[u8]) -> Vec<u8> {
    build_udp(addr(RESOLVER_V6), addr(WORKLOAD_V6), payload, 64).expect("build v6")
}

/// Deterministic xorshift64 generator for no-panic loops (no extra deps).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
