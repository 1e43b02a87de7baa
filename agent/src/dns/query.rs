//! DNS queries from a workload: recognising them, refusing them, and
//! measuring how suspicious their names look (DNS tunnelling leaves long,
//! random-looking labels).

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};

use super::{DnsError, answer::question};

/// A standard query with exactly one question: (name, type).
pub fn parse_query(msg: &Message) -> Result<(String, u16), DnsError> {
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return Err(DnsError::NotAQuery);
    }
    question(msg).ok_or(DnsError::NotAQuery)
}

/// The agent's answer to a query it will not forward: same id and
/// question, `rcode` (NXDOMAIN by default: musl's resolver gives up on the
/// whole search list on REFUSED, glibc and musl both go on after NXDOMAIN).
pub fn refusal(query: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::new(query.metadata.id, MessageType::Response, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = query.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.add_queries(query.queries.iter().cloned());
    m
}

/// Why a name looks like data smuggled out through DNS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suspicion {
    /// A label longer than `LONG_LABEL` characters.
    LongLabel,
    /// A long label whose characters look random (Shannon entropy).
    HighEntropy,
}

/// Labels longer than this are unusual for real host names.
pub const LONG_LABEL: usize = 40;
/// Minimum label length for the entropy test to mean anything.
const ENTROPY_MIN_LEN: usize = 16;
/// Bits per character; English-like host labels stay well below, base32/64
/// and hex encodings of random data land above.
const ENTROPY_BITS: f64 = 3.5;

fn entropy(label: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in label.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = label.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// The first reason `name` looks like tunnelled data, if any.
pub fn suspicion(name: &str) -> Option<Suspicion> {
    let mut high_entropy = false;
    for label in name.split('.') {
        if label.len() > LONG_LABEL {
            return Some(Suspicion::LongLabel);
        }
        if label.len() >= ENTROPY_MIN_LEN && entropy(label) > ENTROPY_BITS {
            high_entropy = true;
        }
    }
    high_entropy.then_some(Suspicion::HighEntropy)
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::RecordType};

    use super::*;
    use crate::dns::{parse_message, testing};

    fn query(name: &str) -> Message {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(testing::name(name), RecordType::AAAA));
        m
    }

    #[test]
    fn refusal_keeps_id_and_question() {
        let q = query("evil.example.test");
        let r = parse_message(&refusal(&q, ResponseCode::NXDomain).to_vec().unwrap()).unwrap();
        assert_eq!(r.metadata.id, 0x4242);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.recursion_desired && r.metadata.recursion_available);
        assert_eq!(question(&r), Some(("evil.example.test".into(), 28)));
        assert!(r.answers.is_empty());
        let refused = refusal(&q, ResponseCode::Refused);
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn only_standard_single_question_queries_parse() {
        assert_eq!(parse_query(&query("a.test")).unwrap(), ("a.test".into(), 28));
        let answer = testing::response(1, "a.test", RecordType::A, vec![]);
        assert!(parse_query(&answer).is_err());
        let mut two = query("a.test");
        two.add_query(Query::query(testing::name("b.test"), RecordType::A));
        assert!(parse_query(&two).is_err());
    }

    #[test]
    fn tunnelling_names_look_suspicious() {
        assert_eq!(suspicion("api.openai.com"), None);
        assert_eq!(suspicion("ec2-203-0-113-10.compute-1.amazonaws.com"), None);
        assert_eq!(suspicion("c2VjcmV0LXBhc3N3b3JkLWZvci10aGUtcHJvZC1kYXRhYmFzZQ.x.test"), Some(Suspicion::LongLabel));
        assert_eq!(suspicion("9f86d081884c7d659a2feaa0c55ad015.x.test"), Some(Suspicion::HighEntropy));
        assert_eq!(suspicion("aaaaaaaaaaaaaaaaaaaaaaaaaaaa.x.test"), None, "long but not random");
    }
}
