//! Rewriting an answer before the workload sees it: DNS-rebinding defence.
//!
//! An allowed name whose authoritative server an attacker controls can
//! answer with 169.254.169.254 or 10.x. Such an address is never learned
//! (see `enforcer::State::learn`), and it is also *stripped* from the answer,
//! so the workload never even holds it: a client that falls back to the next
//! address, or caches it for later, gets nothing to misuse. We strip rather
//! than fail the whole answer so the legitimate addresses of the same name
//! keep working (CDNs mix public and private records in split-horizon DNS).

use std::net::IpAddr;

use hickory_proto::{op::Message, rr::RData};

/// Removes every A/AAAA record (answer and additional sections) whose
/// address `deny` rejects. Returns the removed addresses.
pub fn strip_addresses(msg: &mut Message, mut deny: impl FnMut(IpAddr) -> bool) -> Vec<IpAddr> {
    let mut stripped = Vec::new();
    for section in [&mut msg.answers, &mut msg.additionals] {
        section.retain(|r| {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return true,
            };
            if deny(ip) {
                stripped.push(ip);
                false
            } else {
                true
            }
        });
    }
    stripped
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::dns::{learnable, parse_message, testing};

    #[test]
    fn strips_only_rejected_addresses_and_reserializes() {
        let wire = testing::build_answer(
            "api.example.test",
            RecordType::A,
            vec![
                testing::a("api.example.test", [169, 254, 169, 254], 60),
                testing::a("api.example.test", [203, 0, 113, 10], 60),
                testing::aaaa("api.example.test", "fd00:ec2::254".parse().unwrap(), 60),
            ],
        );
        let mut msg = parse_message(&wire).unwrap();
        let gone = strip_addresses(&mut msg, crate::policy::is_always_denied);
        assert_eq!(gone.len(), 2, "{gone:?}");
        let again = parse_message(&msg.to_vec().unwrap()).unwrap();
        let learned = learnable(&again, 8).unwrap().unwrap();
        let ips: Vec<IpAddr> = learned.addrs.iter().map(|a| a.ip).collect();
        assert_eq!(ips, vec!["203.0.113.10".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn keeps_everything_when_nothing_is_rejected() {
        let wire = testing::build_answer(
            "x.test",
            RecordType::A,
            vec![testing::cname("x.test", "y.test", 60), testing::a("y.test", [192, 0, 2, 7], 60)],
        );
        let mut msg = parse_message(&wire).unwrap();
        assert!(strip_addresses(&mut msg, |_| false).is_empty());
        assert_eq!(msg.answers.len(), 2);
    }
}
