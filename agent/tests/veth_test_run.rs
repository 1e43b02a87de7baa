//! `BPF_PROG_TEST_RUN` tests of the veth programs (`agent-ebpf/src/veth.rs`)
//! on crafted Ethernet frames. The maps are filled through the real path
//! (policy YAML -> compile -> `State`, `State::add_veth`); the synthetic
//! skb's device is the test's loopback (ifindex 1: net/bpf/test_run.c uses
//! it when the context names none), so that is the "veth" assigned here.

mod common;

use common::{load_endpoint, privileged, test_config};
use std::net::IpAddr;

use agent_common::{DNS_KIND_VETH_QUERY, Hook, Reason, counter_index};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use portcullis::{
    datapath::Datapath,
    enforcer::{Caps, Identity, Mode, State},
    policy::{Policy, compile},
};

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
  - toCIDRs: ["10.1.0.0/16"]
    ports: [{port: 8080}]
  - toCIDRs: ["203.0.113.50/32"]
    ports: [{port: 5353, protocol: UDP}]
dns:
  servers: ["198.51.100.53", "[2001:db8:53::53]:53"]
"#;

const NOTHING: &str = "egress: []\ndns:\n  servers: [\"198.51.100.53\"]\n";

const IFINDEX: u32 = 1;
const POD4: &str = "198.18.1.2";
const POD6: &str = "2001:db8:ff01::2";
const NEXT: u32 = u32::MAX; // TC_NEXT (-1)
const DROP: u32 = 2;

struct Harness {
    dp: Datapath,
    state: State,
    ep: u32,
}

fn harness(mode: Mode) -> Option<Harness> {
    harness_with(mode, test_config(false))
}

fn harness_with(mode: Mode, config: agent_common::Config) -> Option<Harness> {
    if !privileged() {
        return None;
    }
    let (dp, mut state, ep) = load_endpoint(config, Caps::default(), POLICY);
    if mode != Mode::Enforce {
        let policy = compile(&Policy::from_yaml_str(POLICY, "t").unwrap(), || Ok::<_, std::io::Error>(vec![])).unwrap();
        state.set_policy(ep, Identity { name: "t".into(), ..Default::default() }, policy, mode).unwrap();
    }
    state.add_veth(ep, IFINDEX, &[POD4.parse().unwrap(), POD6.parse().unwrap()], true).unwrap();
    Some(Harness { dp, state, ep })
}

enum L4 {
    Tcp(u16, bool),
    Udp(u16),
    Icmp,
}

fn frame(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(p, true) => ip.tcp(40000, p, 1, 65535).syn().write(&mut out, b""),
        L4::Tcp(p, false) => ip.tcp(40000, p, 1, 65535).ack(1).write(&mut out, b"x"),
        L4::Udp(p) => ip.udp(40000, p).write(&mut out, b"hello"),
        L4::Icmp if dst.is_ipv4() => ip.icmpv4_echo_request(1, 1).write(&mut out, b"x"),
        L4::Icmp => ip.icmpv6_echo_request(1, 1).write(&mut out, b"x"),
    }
    .unwrap();
    out
}

fn run(prog: &SchedClassifier, data: &[u8]) -> u32 {
    let opts = TestRunOptions { data_in: Some(data), ..TestRunOptions::default() };
    prog.test_run(opts).expect("test_run").return_value
}

impl Harness {
    fn sent_by_pod(&self, data: &[u8]) -> u32 {
        run(self.dp.veth_program("pc_from_pod").unwrap(), data)
    }
    fn to_pod(&self, data: &[u8]) -> u32 {
        run(self.dp.veth_program("pc_to_pod").unwrap(), data)
    }
    fn send(&self, dst: &str, l4: L4) -> u32 {
        let src = if dst.contains(':') { POD6 } else { POD4 };
        self.sent_by_pod(&frame(src, dst, l4))
    }
    fn counter(&self, reason: Reason) -> u64 {
        self.state.maps.counters().unwrap()[counter_index(Hook::TcEgress, reason) as usize]
    }
    fn learn(&mut self, ip: &str) {
        self.state.learn(self.ep, "api.example.test", &[(ip.parse().unwrap(), 60)]).unwrap();
    }
}

#[test]
fn learned_names_cidrs_and_ranges_as_in_cgroup_mode() {
    let Some(mut h) = harness(Mode::Enforce) else { return };
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, true)), DROP, "nothing learned yet");
    h.learn("203.0.113.10");
    h.learn("2001:db8:100::10");
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, true)), NEXT);
    assert_eq!(h.send("2001:db8:100::10", L4::Tcp(443, true)), NEXT);
    assert_eq!(h.send("203.0.113.10", L4::Tcp(80, true)), DROP);
    assert_eq!(h.send("10.1.2.3", L4::Tcp(8080, true)), NEXT);
    assert_eq!(h.send("10.1.2.3", L4::Udp(8080)), DROP, "ports without a protocol are TCP");
    assert_eq!(h.send("10.1.2.3", L4::Tcp(22, true)), DROP);
    for ip in ["169.254.169.254", "10.96.0.10", "fd00:ec2::254", "::ffff:169.254.169.254", "127.0.0.1"] {
        assert_eq!(h.send(ip, L4::Tcp(443, true)), DROP, "{ip}");
    }
    assert_eq!(h.send("203.0.113.99", L4::Icmp), DROP);
    assert_eq!(h.send("2001:db8:100::99", L4::Icmp), DROP);
    assert_eq!(h.counter(Reason::AllowedFqdn), 2);
    assert_eq!(h.counter(Reason::AllowedCidr), 1);
    // The five above, and 10.1.2.3 off the rule's port and protocol.
    assert_eq!(h.counter(Reason::DeniedRange), 7);
}

#[test]
fn an_allowed_flow_costs_one_lookup_after_its_first_packet() {
    let Some(mut h) = harness(Mode::Enforce) else { return };
    h.learn("203.0.113.10");
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, true)), NEXT);
    // The learned address goes (a narrower policy): the flow already
    // judged goes on, as an established connection does in cgroup mode.
    let narrow = compile(&Policy::from_yaml_str(NOTHING, "t").unwrap(), || Ok::<_, std::io::Error>(vec![])).unwrap();
    h.state.set_policy(h.ep, Identity::default(), narrow, Mode::Enforce).unwrap();
    assert_eq!(h.state.learned_count(h.ep), 0);
    for _ in 0..3 {
        assert_eq!(h.send("203.0.113.10", L4::Tcp(443, false)), NEXT);
    }
    assert_eq!(h.counter(Reason::AllowedFqdn), 1, "judged once");
    // A new flow to it is judged, and refused.
    assert_eq!(h.sent_by_pod(&frame(POD4, "203.0.113.10", L4::Udp(443))), DROP);
}

#[test]
fn a_narrowed_policy_keeps_tcp_connections_and_judges_other_flows_again() {
    let Some(mut h) = harness(Mode::Enforce) else { return };
    assert_eq!(h.send("10.1.2.3", L4::Tcp(8080, true)), NEXT);
    assert_eq!(h.send("203.0.113.50", L4::Udp(5353)), NEXT);
    let narrow = compile(&Policy::from_yaml_str(NOTHING, "t").unwrap(), || Ok::<_, std::io::Error>(vec![])).unwrap();
    h.state.set_policy(h.ep, Identity::default(), narrow, Mode::Enforce).unwrap();
    assert_eq!(h.send("10.1.2.3", L4::Tcp(8080, false)), NEXT, "an established connection goes on");
    assert_eq!(h.send("203.0.113.50", L4::Udp(5353)), DROP, "a datagram is judged by the new policy");
}

#[test]
fn a_forged_source_or_a_foreign_arp_is_dropped() {
    let Some(mut h) = harness(Mode::Enforce) else { return };
    h.learn("203.0.113.10");
    assert_eq!(h.sent_by_pod(&frame("198.18.1.77", "203.0.113.10", L4::Tcp(443, true))), DROP);
    assert_eq!(h.sent_by_pod(&frame("2001:db8:ff01::77", "2001:db8:100::10", L4::Udp(443))), DROP);
    assert_eq!(h.counter(Reason::DeniedSpoofed), 2);
    let arp = |spa: [u8; 4]| {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2]);
        f.extend(spa);
        f.extend([0; 6]);
        f.extend([198, 18, 1, 1]);
        f
    };
    assert_eq!(h.sent_by_pod(&arp([198, 18, 1, 2])), NEXT, "ARP for its own address");
    assert_eq!(h.sent_by_pod(&arp([0, 0, 0, 0])), NEXT, "ARP probe");
    assert_eq!(h.sent_by_pod(&arp([198, 18, 1, 1])), DROP, "claims the gateway's address");
    let mut vlan = frame(POD4, "203.0.113.10", L4::Tcp(443, true));
    vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    assert_eq!(h.sent_by_pod(&vlan), DROP, "not IP, not ARP");
    assert_eq!(h.counter(Reason::AllowedNeighbor), 2);
    assert_eq!(h.counter(Reason::DeniedMalformed), 1);
}

#[test]
fn neighbour_discovery_passes_only_on_the_link() {
    let Some(h) = harness(Mode::Enforce) else { return };
    let nd = |src: &str, dst: &str, icmp_type: u8, hop_limit: u8| {
        let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(s.octets(), d.octets(), hop_limit)
            .icmpv6(etherparse::Icmpv6Type::Unknown { type_u8: icmp_type, code_u8: 0, bytes5to8: [0; 4] })
            .write(&mut out, &[0; 16])
            .unwrap();
        out
    };
    assert_eq!(h.sent_by_pod(&nd("fe80::2", "ff02::1:ff00:1", 135, 255)), NEXT, "neighbour solicitation");
    assert_eq!(h.sent_by_pod(&nd("::", "ff02::1:ff00:2", 135, 255)), NEXT, "duplicate address detection");
    assert_eq!(h.sent_by_pod(&nd("fe80::2", "ff02::2", 133, 255)), NEXT, "router solicitation");
    assert_eq!(h.sent_by_pod(&nd("fe80::2", "ff02::16", 143, 1)), NEXT, "MLDv2 report");
    // As the kernel sends it: behind a hop-by-hop header (router alert).
    let mut mld = nd("fe80::2", "ff02::16", 143, 1);
    mld[14 + 6] = 0;
    let hbh = [58u8, 0, 5, 2, 0, 0, 1, 0];
    mld.splice(14 + 40..14 + 40, hbh);
    let len = u16::from_be_bytes([mld[18], mld[19]]) + 8;
    mld[18..20].copy_from_slice(&len.to_be_bytes());
    assert_eq!(h.sent_by_pod(&mld), NEXT, "MLDv2 report with its router alert");
    assert_eq!(h.sent_by_pod(&nd("fe80::2", "2001:db8:100::10", 135, 255)), DROP, "not link-scope");
    assert_eq!(h.sent_by_pod(&nd("fe80::2", "ff02::1", 135, 64)), DROP, "routed ND is no ND");
    assert_eq!(h.sent_by_pod(&nd("fe80::2", "ff02::1", 128, 255)), DROP, "an echo request is judged");
}

#[test]
fn dns_is_taken_off_the_wire() {
    let Some(mut h) = harness(Mode::Enforce) else { return };
    let mut ring = h.dp.take_dns_hold().unwrap();
    let query = frame(POD4, "198.51.100.53", L4::Udp(53));
    assert_eq!(h.sent_by_pod(&query), DROP, "never on the wire: the agent answers it");
    assert_eq!(h.send("2001:db8:53::53", L4::Udp(53)), DROP);
    assert_eq!(h.counter(Reason::DnsCaught), 2);
    let rec = ring.next().expect("the query went to the agent");
    let (held, data) = portcullis::dnsgate::hold::decode(&rec).unwrap();
    assert_eq!((held.kind, held.ifindex, held.endpoint), (DNS_KIND_VETH_QUERY, IFINDEX, h.ep));
    assert_eq!(data, &query[..], "the whole frame");
    drop(rec);
    assert_eq!(h.send("198.51.100.99", L4::Udp(53)), DROP);
    assert_eq!(h.send("8.8.8.8", L4::Tcp(53, true)), DROP);
    assert_eq!(h.counter(Reason::DeniedDnsServer), 2);
    assert_eq!(h.send("198.51.100.53", L4::Tcp(53, true)), DROP, "no TCP DNS on a veth");
    assert_eq!(h.counter(Reason::DeniedDnsNoGate), 1);
    // An answer the pod received opens no way to the resolver.
    h.learn("198.51.100.53");
    let answer = frame("198.51.100.53", POD4, L4::Udp(53));
    let mut swapped = answer;
    swapped[34..38].copy_from_slice(&[0x9c, 0x40, 0, 53]);
    assert_eq!(h.to_pod(&swapped), NEXT);
    assert_eq!(h.sent_by_pod(&frame(POD4, "198.51.100.53", L4::Udp(53))), DROP);
    assert_eq!(h.counter(Reason::DnsCaught), 3);
}

#[test]
fn replies_to_flows_a_peer_opened_pass() {
    let Some(h) = harness(Mode::Enforce) else { return };
    // A peer's datagram (its port 40000, the pod's 5353) and SYN in.
    assert_eq!(h.to_pod(&frame("203.0.113.77", POD4, L4::Udp(5353))), NEXT);
    assert_eq!(h.to_pod(&frame("203.0.113.78", POD4, L4::Tcp(8080, true))), NEXT);
    let reply = |peer: &str, l4: L4| {
        let mut f = frame(POD4, peer, l4);
        // Ports swapped: from the pod's service port to the peer's 40000.
        let (sp, dp) = (f[34..36].to_vec(), f[36..38].to_vec());
        f[34..36].copy_from_slice(&dp);
        f[36..38].copy_from_slice(&sp);
        f
    };
    assert_eq!(h.sent_by_pod(&reply("203.0.113.77", L4::Udp(5353))), NEXT);
    assert_eq!(h.sent_by_pod(&reply("203.0.113.78", L4::Tcp(8080, false))), NEXT);
    assert_eq!(h.sent_by_pod(&reply("203.0.113.78", L4::Udp(8080))), DROP, "that flow only");
    // A mid-stream segment in opens nothing.
    assert_eq!(h.to_pod(&frame("203.0.113.79", POD4, L4::Tcp(8080, false))), NEXT);
    assert_eq!(h.sent_by_pod(&reply("203.0.113.79", L4::Tcp(8080, false))), DROP);
}

#[test]
fn unassigned_interfaces_drop_and_a_reassigned_one_forgets_its_flows() {
    let Some(mut h) = harness(Mode::Enforce) else { return };
    h.learn("203.0.113.10");
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, true)), NEXT);
    h.state.remove_veth(h.ep, IFINDEX).unwrap();
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, false)), DROP, "attached but nobody's: fail closed");
    // The ifindex goes to another pod: the old flow does not pass for it.
    let policy = compile(&Policy::from_yaml_str(NOTHING, "t").unwrap(), || Ok::<_, std::io::Error>(vec![])).unwrap();
    let other = h.state.add_endpoint(Identity::default(), 424_242, policy, Mode::Enforce).unwrap();
    h.state.add_veth(other, IFINDEX, &[POD4.parse().unwrap()], true).unwrap();
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, false)), DROP);
}

#[test]
fn audit_and_exempt_let_everything_through() {
    let Some(h) = harness(Mode::Audit) else { return };
    assert_eq!(h.send("169.254.169.254", L4::Tcp(80, true)), NEXT);
    assert_eq!(h.sent_by_pod(&frame("198.18.1.77", "203.0.113.10", L4::Tcp(443, true))), NEXT);
    assert_eq!(h.counter(Reason::DeniedRange), 1, "judged and counted");
    let Some(h) = harness(Mode::Exempt) else { return };
    assert_eq!(h.send("169.254.169.254", L4::Tcp(80, true)), NEXT);
    assert_eq!(h.counter(Reason::AllowedExempt), 1);
}

#[test]
fn flow_counts_on_the_veth_only_where_it_counts() {
    use portcullis::enforcer::FlowCounts;
    let Some(mut h) = harness(Mode::Enforce) else { return };
    let flows = h.state.maps.counter_reader();
    h.learn("203.0.113.10");
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, true)), NEXT);
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, false)), NEXT, "a known flow: bytes only");
    assert_eq!(h.send("10.1.2.3", L4::Tcp(8080, true)), NEXT);
    assert_eq!(h.send("169.254.169.254", L4::Tcp(80, true)), DROP);
    assert_eq!(h.send("203.0.113.99", L4::Udp(9)), DROP);
    assert_eq!(h.sent_by_pod(&frame("198.18.9.9", "203.0.113.10", L4::Udp(443))), DROP, "forged source");
    let rules: Vec<String> = (1..=3).map(|i| format!("rule {i}")).collect();
    let c = FlowCounts::from_kernel(&flows.flows.read(h.ep).unwrap(), &rules);
    assert_eq!(c.connections[Reason::AllowedFqdn as usize], 1, "the SYN opens a connection");
    assert_eq!(c.connections[Reason::AllowedCidr as usize], 1);
    assert_eq!(c.connections[Reason::DeniedRange as usize], 1);
    assert_eq!(c.datagrams[Reason::DeniedDefault as usize], 1);
    assert_eq!(c.datagrams[Reason::DeniedSpoofed as usize], 1);
    assert_eq!(c.rules[0], ("rule 1".to_owned(), 1));
    assert_eq!(c.rules[1], ("rule 2".to_owned(), 1));
    assert!(c.ranges.contains(&("metadata", 1)), "{:?}", c.ranges);
    assert_eq!(c.egress_packets, 3, "the packets let through");
    assert!(c.egress_bytes > 3 * 54);
    // Each allowed connection once by destination (`FLOW_DESTS`): the
    // learned name's and the CIDR rule's; no denial, no datagram.
    let mut dests: Vec<(u32, [u8; 16], u16, u64)> =
        flows.dests.read().into_iter().map(|(k, n)| (k.endpoint, k.ip, u16::from_be_bytes(k.port), n)).collect();
    dests.sort();
    let mapped = |a: [u8; 4]| agent_common::v4_mapped(a);
    assert_eq!(dests, [(h.ep, mapped([10, 1, 2, 3]), 8080, 1), (h.ep, mapped([203, 0, 113, 10]), 443, 1)]);
    // To the pod: counted through the per-CPU interface memo.
    let reply = frame("203.0.113.10", POD4, L4::Tcp(443, false));
    assert_eq!(h.to_pod(&reply), NEXT);
    assert_eq!(h.to_pod(&reply), NEXT);
    let c = FlowCounts::from_kernel(&flows.flows.read(h.ep).unwrap(), &rules);
    assert_eq!(c.ingress_packets, 2);
    assert_eq!(c.ingress_bytes, 2 * reply.len() as u64);

    // Without the interface's flag (the cgroup hooks judge that pod and
    // count its verdicts) the veth counts bytes only: no verdict is
    // counted twice.
    let verdicts = |c: &FlowCounts| (c.connections, c.datagrams, c.rules.clone(), c.ranges.clone());
    let before = FlowCounts::from_kernel(&flows.flows.read(h.ep).unwrap(), &rules);
    h.state.remove_veth(h.ep, IFINDEX).unwrap();
    h.state.add_veth(h.ep, IFINDEX, &[POD4.parse().unwrap()], false).unwrap();
    assert_eq!(h.send("10.1.2.3", L4::Tcp(8080, true)), NEXT);
    assert_eq!(h.send("169.254.169.254", L4::Tcp(80, true)), DROP);
    let after = FlowCounts::from_kernel(&flows.flows.read(h.ep).unwrap(), &rules);
    assert_eq!(verdicts(&after), verdicts(&before));
    assert_eq!(after.egress_packets, before.egress_packets + 1);

    // An interface given to another pod: its bytes go there at once
    // (the memo is valid for one generation of the maps).
    let policy = compile(&Policy::from_yaml_str(NOTHING, "t").unwrap(), || Ok::<_, std::io::Error>(vec![])).unwrap();
    let other = h.state.add_endpoint(Identity::default(), 424_242, policy, Mode::Enforce).unwrap();
    assert_eq!(h.to_pod(&reply), NEXT, "the memo now holds this pod");
    h.state.remove_veth(h.ep, IFINDEX).unwrap();
    h.state.add_veth(other, IFINDEX, &[POD4.parse().unwrap()], false).unwrap();
    assert_eq!(h.to_pod(&reply), NEXT);
    let c = FlowCounts::from_kernel(&flows.flows.read(h.ep).unwrap(), &rules);
    assert_eq!(c.ingress_packets, 3, "not the previous pod's");
    assert_eq!(FlowCounts::from_kernel(&flows.flows.read(other).unwrap(), &rules).ingress_packets, 1);
    // A removed endpoint's destinations go with it.
    h.state.remove_endpoint(h.ep).unwrap();
    assert!(flows.dests.read().iter().all(|(k, _)| k.endpoint != h.ep), "{:?}", flows.dests.read());
}

/// A full `DNS_HOLD` ring (no agent reading it): the query is dropped,
/// counted, and the kernel says so in the agent's log (aya-log), once per
/// event, not per packet passed.
#[test]
fn a_full_hold_ring_reaches_the_agents_log() {
    use agent_common::loss;
    let Some(mut h) = harness(Mode::Enforce) else { return };
    let mut log = h.dp.take_kernel_log().expect("the kernel log ring");
    h.learn("203.0.113.10");
    assert_eq!(h.send("203.0.113.10", L4::Tcp(443, true)), NEXT);
    log.drain();
    assert!(log.lines().is_empty(), "an allowed packet logs nothing: {:?}", log.lines());
    let query = frame(POD4, "198.51.100.53", L4::Udp(53));
    let full = |h: &Harness| h.state.maps.counters().unwrap()[loss::DNS_RINGBUF_FULL as usize];
    let mut sent = 0;
    while full(&h) == 0 && sent < 100_000 {
        assert_eq!(h.sent_by_pod(&query), DROP);
        sent += 1;
    }
    assert_eq!(full(&h), 1, "the ring filled after {sent} queries");
    log.drain();
    let lines = log.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("DNS_HOLD ring full") && lines[0].contains(&format!("endpoint {}", h.ep)), "{lines:?}");
}

/// A denied packet whose record finds `DENIED_EVENTS` full (nobody reads
/// it here; no rate limit): still dropped, counted, and said once in the
/// agent's log through aya-log.
#[test]
fn a_full_event_ring_reaches_the_agents_log() {
    use agent_common::loss;
    let unlimited = agent_common::Config { events_per_sec: u32::MAX, events_burst: u32::MAX, ..test_config(false) };
    let Some(mut h) = harness_with(Mode::Enforce, unlimited) else { return };
    let mut log = h.dp.take_kernel_log().expect("the kernel log ring");
    let full = |h: &Harness| h.state.maps.counters().unwrap()[loss::EVENT_RINGBUF_FULL as usize];
    // Most of the way in one BPF_PROG_TEST_RUN (3,000 runs; the ring holds
    // 3,276 records), the rest one by one.
    let syn = frame(POD4, "203.0.113.20", L4::Tcp(443, true));
    let opts = TestRunOptions { data_in: Some(&syn), repeat: 3000, ..TestRunOptions::default() };
    assert_eq!(h.dp.veth_program("pc_from_pod").unwrap().test_run(opts).expect("test_run").return_value, DROP);
    assert_eq!(full(&h), 0, "3,000 records fit");
    let mut sent = 3000;
    while full(&h) == 0 && sent < 100_000 {
        assert_eq!(h.send("203.0.113.20", L4::Tcp(443, true)), DROP);
        sent += 1;
    }
    assert_eq!(full(&h), 1, "the ring filled after {sent} denials");
    log.drain();
    let lines = log.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("DENIED_EVENTS ring full") && lines[0].contains(&format!("endpoint {}", h.ep)), "{lines:?}");
}

/// Two destinations that share a `FLOW_DEST_SLOTS` slot: the second takes
/// the slot and the first's count moves to `FLOW_DESTS`; neither is lost.
#[test]
fn a_destination_slot_taken_over_keeps_both_counts() {
    use agent_common::{dest_slot, v4_mapped};
    let Some(mut h) = harness(Mode::Enforce) else { return };
    let flows = h.state.maps.counter_reader();
    let port = 443u16.to_be_bytes();
    let slot = |last: u8| dest_slot(h.ep, port, &v4_mapped([203, 0, 113, last]));
    let (a, b) = (1..=255u8)
        .flat_map(|x| (x + 1..=255).map(move |y| (x, y)))
        .find(|(x, y)| x != y && slot(*x) == slot(*y))
        .expect("two addresses of 203.0.113.0/24 in one slot");
    for last in [a, b] {
        h.learn(&format!("203.0.113.{last}"));
        assert_eq!(h.send(&format!("203.0.113.{last}"), L4::Tcp(443, true)), NEXT);
    }
    let mut got: Vec<([u8; 16], u64)> =
        flows.dests.read().into_iter().filter(|(k, _)| k.endpoint == h.ep).map(|(k, n)| (k.ip, n)).collect();
    got.sort();
    assert_eq!(got, [(v4_mapped([203, 0, 113, a]), 1), (v4_mapped([203, 0, 113, b]), 1)]);
}
