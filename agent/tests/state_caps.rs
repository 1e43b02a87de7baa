//! Learned-address caps against the real kernel maps: `State` with
//! `ips_per_name = 3` learns five addresses for one name, and
//! `BPF_PROG_TEST_RUN` on `cgroup_skb/egress` shows only the last three are
//! allowed. Harness as in prog_test_run.rs (the synthetic skb's socket
//! belongs to this test's cgroup, registered as the endpoint).

mod common;

use common::{load_endpoint, privileged, test_config};
use std::net::IpAddr;

use agent_common::{Hook, Reason, counter_index};
use aya::programs::{CgroupSkb, TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use portcullis::enforcer::Caps;

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53"]
"#;

const ALLOW: u32 = 1;
const DROP: u32 = 0;

fn tcp_syn(dst: IpAddr, dport: u16) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = ("198.18.1.2".parse().unwrap(), dst) else { panic!("IPv4 only") };
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(40000, dport, 1, 65535)
        .syn()
        .write(&mut out, b"hello")
        .expect("build packet");
    out
}

fn run(prog: &CgroupSkb, pkt: &[u8]) -> u32 {
    // __sk_buff with mark 0 as ctx_in.
    let ctx = [0u8; 192];
    let opts = TestRunOptions { data_in: Some(pkt), ctx_in: Some(&ctx[..]), ..TestRunOptions::default() };
    prog.test_run(opts).expect("test_run").return_value
}

#[test]
fn ips_per_name_cap_keeps_the_last_learned_addresses() {
    if !privileged() {
        return;
    }
    let (dp, mut state, ep) = load_endpoint(test_config(false), Caps { ips_per_name: 3, ..Caps::default() }, POLICY);
    let egress = |ip: &IpAddr| run(dp.egress_program().unwrap(), &tcp_syn(*ip, 443));

    let ips: Vec<IpAddr> = (1..=5).map(|n| format!("203.0.113.{n}").parse().unwrap()).collect();
    let mut evicted = 0;
    for ip in &ips {
        let out = state.learn(ep, "api.example.test", &[(*ip, 60)]).expect("learn");
        assert_eq!(out.allowed, vec![*ip]);
        assert!(out.refused.is_empty());
        evicted += out.evicted;
    }
    assert_eq!(evicted, 2);
    assert_eq!(state.cap_stats().evicted_ips_per_name, 2);
    assert_eq!(state.learned_count(ep), 3);
    let verdicts: Vec<u32> = ips.iter().map(egress).collect();
    assert_eq!(verdicts, [DROP, DROP, ALLOW, ALLOW, ALLOW], "only the last three learned stay allowed");

    // A refresh makes .3 the most recent: the next address evicts .4.
    state.learn(ep, "api.example.test", &[(ips[2], 60)]).expect("refresh");
    let six: IpAddr = "203.0.113.6".parse().unwrap();
    state.learn(ep, "api.example.test", &[(six, 60)]).expect("learn");
    let verdicts: Vec<u32> = [ips[2], ips[3], ips[4], six].iter().map(egress).collect();
    assert_eq!(verdicts, [ALLOW, DROP, ALLOW, ALLOW]);
    let counters = state.maps.counters().expect("counters");
    assert_eq!(counters[counter_index(Hook::SkbEgress, Reason::AllowedFqdn) as usize], 6);
}
