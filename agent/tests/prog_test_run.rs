//! `BPF_PROG_TEST_RUN` tests of the `cgroup_skb` verdicts on crafted IPv4 and
//! IPv6 packets. Maps are filled through the real path (policy YAML ->
//! compile -> `State`), nothing is attached anywhere: the kernel runs the
//! program on a synthetic skb whose socket belongs to this test's cgroup
//! (net/bpf/test_run.c allocates it in the caller's cgroup), so registering
//! that cgroup as an endpoint is enough.

mod common;

use common::{INJECT_MARK, load_endpoint, own_cgroup_id, privileged, test_config};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{Config, Hook, Reason, counter_index, loss};
use aya::programs::{CgroupSkb, TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use portcullis::{
    datapath::Datapath,
    enforcer::{Caps, Mode, State},
};

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
  - toFQDNs: [{matchPattern: "*.any.test"}]
  - toCIDRs: ["10.1.0.0/16"]
    ports: [{port: 8080}]
dns:
  servers: ["198.51.100.53", "[2001:db8:53::53]:53"]
"#;

struct Harness {
    dp: Datapath,
    state: State,
    ep: u32,
    cfg: Config,
}

const MARK: u32 = INJECT_MARK;

fn harness(unmanaged_allow: bool) -> Option<Harness> {
    if !privileged() {
        return None;
    }
    harness_with(test_config(unmanaged_allow))
}

fn harness_with(cfg: Config) -> Option<Harness> {
    if !privileged() {
        return None;
    }
    let (dp, state, ep) = load_endpoint(cfg, Caps::default(), POLICY);
    Some(Harness { dp, state, ep, cfg })
}

enum L4 {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

fn packet(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    let payload = b"hello";
    match l4 {
        L4::Tcp(p) => ip.tcp(40000, p, 1, 65535).syn().write(&mut out, payload),
        L4::Udp(p) => ip.udp(40000, p).write(&mut out, payload),
        L4::Icmp if dst.is_ipv4() => ip.icmpv4_echo_request(1, 1).write(&mut out, payload),
        L4::Icmp => ip.icmpv6_echo_request(1, 1).write(&mut out, payload),
    }
    .expect("build packet");
    out
}

fn run(prog: &CgroupSkb, pkt: &[u8], mark: u32) -> u32 {
    // __sk_buff with only `mark` set (offset 8): test_run accepts it as ctx_in.
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let opts = TestRunOptions { data_in: Some(pkt), ctx_in: Some(&ctx[..]), ..TestRunOptions::default() };
    prog.test_run(opts).expect("test_run").return_value
}

impl Harness {
    fn egress(&self, dst: &str, l4: L4) -> u32 {
        let dst: IpAddr = dst.parse().unwrap();
        let src: IpAddr = if dst.is_ipv4() { "198.18.1.2".parse().unwrap() } else { "2001:db8:ff01::2".parse().unwrap() };
        run(self.dp.egress_program().unwrap(), &packet(src, dst, l4), 0)
    }

    fn counter(&self, hook: Hook, reason: Reason) -> u64 {
        self.state.maps.counters().unwrap()[counter_index(hook, reason) as usize]
    }

    fn learn(&mut self, name: &str, ip: &str, ttl: u32) {
        let ip: IpAddr = ip.parse().unwrap();
        self.state.learn(self.ep, name, &[(ip, ttl)]).unwrap();
    }
}

const ALLOW: u32 = 1;
const DROP: u32 = 0;

#[test]
fn learned_name_only_on_its_port() {
    let Some(mut h) = harness(false) else { return };
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), DROP, "nothing learned yet");
    h.learn("api.example.test", "203.0.113.10", 60);
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), ALLOW);
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(80)), DROP);
    assert_eq!(h.egress("203.0.113.10", L4::Udp(443)), DROP, "rule is TCP only");
    assert_eq!(h.egress("203.0.113.10", L4::Icmp), DROP);
    assert_eq!(h.egress("203.0.113.11", L4::Tcp(443)), DROP, "IP never learned");
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedFqdn), 1);
    assert!(h.counter(Hook::SkbEgress, Reason::DeniedDefault) >= 4);
}

#[test]
fn learned_ipv6_and_ipv4_mapped_forms() {
    let Some(mut h) = harness(false) else { return };
    h.learn("api.example.test", "2001:db8:100::10", 60);
    assert_eq!(h.egress("2001:db8:100::10", L4::Tcp(443)), ALLOW);
    assert_eq!(h.egress("2001:db8:100::10", L4::Tcp(22)), DROP);
    h.learn("api.example.test", "203.0.113.10", 60);
    // A v6 socket talking to the v4-mapped form hits the same key.
    assert_eq!(h.egress("::ffff:203.0.113.10", L4::Tcp(443)), ALLOW);
}

#[test]
fn rule_without_ports_allows_every_protocol() {
    let Some(mut h) = harness(false) else { return };
    h.learn("x.any.test", "203.0.113.50", 60);
    assert_eq!(h.egress("203.0.113.50", L4::Tcp(22)), ALLOW);
    assert_eq!(h.egress("203.0.113.50", L4::Udp(9999)), ALLOW);
    assert_eq!(h.egress("203.0.113.50", L4::Icmp), ALLOW);
}

#[test]
fn always_denied_ranges_even_when_dns_says_so() {
    let Some(mut h) = harness(false) else { return };
    for ip in
        ["169.254.169.254", "10.96.0.10", "100.100.100.200", "fd00:ec2::254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"]
    {
        h.learn("api.example.test", ip, 60);
        let l4 = L4::Tcp(443);
        assert_eq!(h.egress(ip, l4), DROP, "{ip} must stay denied");
    }
    assert!(h.counter(Hook::SkbEgress, Reason::DeniedRange) >= 6);
    assert_eq!(h.state.learned_count(h.ep), 0, "no denied address is ever learned");
}

#[test]
fn explicit_cidr_opens_a_hole_in_a_denied_range() {
    let Some(h) = harness(false) else { return };
    assert_eq!(h.egress("10.1.2.3", L4::Tcp(8080)), ALLOW);
    assert_eq!(h.egress("10.1.2.3", L4::Tcp(22)), DROP);
    assert_eq!(h.egress("10.2.0.1", L4::Tcp(8080)), DROP);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedCidr), 1);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedRange), 2);
}

#[test]
fn dns_only_to_trusted_resolvers() {
    let Some(h) = harness(false) else { return };
    assert_eq!(h.egress("198.51.100.53", L4::Tcp(53)), ALLOW);
    // A UDP query is copied to the agent with its owner (recorded by the
    // connect/sendmsg hooks) so the answer can be paired with it. The
    // synthetic socket has none: the query fails closed.
    assert_eq!(h.egress("198.51.100.53", L4::Udp(53)), DROP);
    assert_eq!(h.egress("2001:db8:53::53", L4::Udp(53)), DROP);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DnsHoldFailed), 2);
    assert_eq!(h.egress("198.51.100.99", L4::Udp(53)), DROP);
    assert_eq!(h.egress("8.8.8.8", L4::Tcp(53)), DROP);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedDnsServer), 2);
}

#[test]
fn expired_learned_ip_is_refused() {
    let Some(mut h) = harness(false) else { return };
    h.learn("api.example.test", "203.0.113.10", 0);
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), DROP);
}

#[test]
fn malformed_packets_are_dropped() {
    let Some(h) = harness(false) else { return };
    let good = packet("198.18.1.2".parse().unwrap(), "203.0.113.10".parse().unwrap(), L4::Tcp(443));
    // IPv4 header intact but only 2 bytes of TCP header: no destination port.
    let mut short_tcp = good[..14 + 20 + 2].to_vec();
    short_tcp[16..18].copy_from_slice(&22u16.to_be_bytes());
    // IHL below 5 words.
    let mut bad_ihl = good;
    bad_ihl[14] = 0x43;
    for pkt in [short_tcp, bad_ihl] {
        assert_eq!(run(h.dp.egress_program().unwrap(), &pkt, 0), DROP);
    }
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedMalformed), 2);
}

#[test]
fn unmanaged_cgroups_follow_config() {
    for (allow, expect) in [(false, DROP), (true, ALLOW)] {
        let Some(mut h) = harness(allow) else { return };
        let cg = own_cgroup_id();
        h.state.remove_endpoint(h.ep).unwrap();
        assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), expect, "unmanaged_allow={allow} (cgroup {cg})");
        let _ = h.cfg;
    }
}

#[test]
fn exempt_endpoints_pass_where_unknown_cgroups_are_denied() {
    let Some(mut h) = harness(false) else { return };
    let (identity, policy) = {
        let ep = h.state.endpoint(h.ep).expect("endpoint");
        (ep.identity.clone(), (*ep.policy).clone())
    };
    h.state.set_policy(h.ep, identity.clone(), policy.clone(), Mode::Exempt).unwrap();
    for (dst, l4) in [("169.254.169.254", L4::Tcp(80)), ("10.9.9.9", L4::Udp(53)), ("2001:db8:1::1", L4::Icmp)] {
        assert_eq!(h.egress(dst, l4), ALLOW, "{dst}: exempt");
    }
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedExempt), 3);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedRange), 0);
    h.state.set_policy(h.ep, identity, policy, Mode::Enforce).unwrap();
    assert_eq!(h.egress("169.254.169.254", L4::Tcp(80)), DROP, "enforced again");
    h.state.remove_endpoint(h.ep).unwrap();
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), DROP, "unknown: denied");
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedExempt), 3);
}

#[test]
fn dns_answer_without_owner_is_held_back() {
    let Some(mut h) = harness(false) else { return };
    let mut log = h.dp.take_kernel_log().expect("the kernel log ring");
    let ingress = h.dp.ingress_program().unwrap();
    let answer = packet("198.51.100.53".parse().unwrap(), "198.18.1.2".parse().unwrap(), L4::Udp(40000));
    // The synthetic socket never sent a query: no owner, fail closed.
    let mut answer_from_53 = answer;
    answer_from_53[34..36].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(run(ingress, &answer_from_53, 0), DROP);
    let c = h.state.maps.counters().unwrap();
    assert_eq!(c[loss::DNS_NO_OWNER as usize], 1);
    // Also in the agent's log (aya-log), once.
    log.drain();
    let lines = log.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("not in DNS_SOCKS") && lines[0].contains(&format!("endpoint {}", h.ep)), "{lines:?}");
    assert_eq!(c[counter_index(Hook::SkbIngress, Reason::DnsHoldFailed) as usize], 1);
    // The agent's re-injected copy carries the mark and passes.
    assert_eq!(run(ingress, &answer_from_53, MARK), ALLOW);
    // A different mark does not.
    assert_eq!(run(ingress, &answer_from_53, MARK ^ 1), DROP);
    // Other traffic in is never held.
    let other = packet("203.0.113.10".parse().unwrap(), "198.18.1.2".parse().unwrap(), L4::Udp(40000));
    assert_eq!(run(ingress, &other, 0), ALLOW);
    let _ = (Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST);
}

#[test]
fn traffic_to_a_dns_gate_port_passes_as_dns() {
    let Some(mut h) = harness(false) else { return };
    let netns = portcullis::datapath::loader::current_netns_cookie().expect("netns cookie");
    let before = h.counter(Hook::SkbEgress, Reason::AllowedDns);
    let install_gate = |h: &mut Harness| {
        let gate = agent_common::GatePortKey { netns_cookie: netns, port: 5353u16.to_be_bytes(), proto: 17, _pad: [0; 5] };
        let resolver = agent_common::GatePortValue {
            ip: Ipv4Addr::new(198, 51, 100, 53).to_ipv6_mapped().octets(),
            port: 53u16.to_be_bytes(),
            _pad: [0; 2],
            endpoint: h.ep,
        };
        h.state.maps.insert_gate_port(gate, resolver).expect("gate port");
    };
    if !portcullis::datapath::probe::features().skb_netns_cookie {
        // Where the packet programs cannot ask the kernel, a socket's
        // namespace is what `cgroup/sock_create` noted; the synthetic socket
        // of BPF_PROG_TEST_RUN never met it, like a socket older than the
        // programs: its loopback counts as the host's, and no gate is
        // recognised (fail closed).
        install_gate(&mut h);
        assert_eq!(h.egress("127.0.0.1", L4::Udp(5353)), DROP);
        assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedDns), before);
        assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedRange), 1);
        return;
    }
    // No gate on that port: plain loopback traffic (not the host netns here).
    assert_eq!(h.egress("127.0.0.1", L4::Udp(5353)), ALLOW);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedDns), before);
    install_gate(&mut h);
    assert_eq!(h.egress("127.0.0.1", L4::Udp(5353)), ALLOW);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedDns), before + 1, "counted as DNS to the gate");
    // Another port, or TCP to that UDP port: not the gate.
    assert_eq!(h.egress("127.0.0.1", L4::Udp(5354)), ALLOW);
    assert_eq!(h.egress("127.0.0.1", L4::Tcp(5353)), ALLOW);
    assert_eq!(h.counter(Hook::SkbEgress, Reason::AllowedDns), before + 1);
}

/// `pkt` (Ethernet + IPv4 + ...) with `opts` (whole 4-byte words) as IPv4
/// options.
fn with_ipv4_options(pkt: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut out = pkt[..14 + 20].to_vec();
    out.extend_from_slice(opts);
    out.extend_from_slice(&pkt[14 + 20..]);
    out[14] = 0x40 | ((20 + opts.len()) / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + opts.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out
}

/// `pkt` (Ethernet + IPv6 + ...) with an extension header of type `kind`
/// (`body` after its next-header byte) right after the fixed header.
fn with_ipv6_ext(pkt: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = pkt[..14 + 40].to_vec();
    out.push(pkt[14 + 6]);
    out.extend_from_slice(body);
    assert_eq!((body.len() + 1) % 8, 0);
    out.extend_from_slice(&pkt[14 + 40..]);
    out[14 + 6] = kind;
    let len = u16::from_be_bytes([out[18], out[19]]) + body.len() as u16 + 1;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn ipv4_source_route_options_are_dropped() {
    let Some(h) = harness(false) else { return };
    let egress = h.dp.egress_program().unwrap();
    // 10.1.0.0/16 TCP 8080 is allowed: only the options decide.
    let syn = packet("198.18.1.2".parse().unwrap(), "10.1.0.5".parse().unwrap(), L4::Tcp(8080));
    assert_eq!(run(egress, &syn, 0), ALLOW);
    let hop = [169, 254, 169, 254];
    for kind in [0x83u8, 0x89] {
        // Loose / strict source route via the metadata address; then EOL.
        let opts = [kind, 7, 4, hop[0], hop[1], hop[2], hop[3], 0];
        assert_eq!(run(egress, &with_ipv4_options(&syn, &opts), 0), DROP, "option {kind:#x}");
    }
    // After no-ops and a timestamp option, in the last words of 40 bytes.
    let mut late = [1u8; 40];
    late[..4].copy_from_slice(&[0x44, 4, 5, 0]);
    late[32..39].copy_from_slice(&[0x83, 7, 4, hop[0], hop[1], hop[2], hop[3]]);
    assert_eq!(run(egress, &with_ipv4_options(&syn, &late), 0), DROP, "route in the last words");
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedSourceRoute), 3);
    // Options that do not route: record route, no-ops.
    let rr = [7, 7, 4, 0, 0, 0, 0, 1];
    assert_eq!(run(egress, &with_ipv4_options(&syn, &rr), 0), ALLOW, "record route");
    assert_eq!(run(egress, &with_ipv4_options(&syn, &[1, 1, 1, 1]), 0), ALLOW, "no-ops");
    // Options cut short by the packet's end: malformed, dropped.
    let mut cut = with_ipv4_options(&syn, &late);
    cut.truncate(14 + 20 + 12);
    cut[16..18].copy_from_slice(&32u16.to_be_bytes());
    assert_eq!(run(egress, &cut, 0), DROP, "truncated options");
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedSourceRoute), 3);
}

#[test]
fn ipv6_routing_headers_are_dropped() {
    let Some(mut h) = harness(false) else { return };
    h.learn("x.any.test", "2001:db8:100::50", 60);
    let egress = h.dp.egress_program().unwrap();
    let src: IpAddr = "2001:db8:ff01::2".parse().unwrap();
    let dst: IpAddr = "2001:db8:100::50".parse().unwrap();
    let udp = packet(src, dst, L4::Udp(7777));
    let syn = packet(src, dst, L4::Tcp(443));
    assert_eq!(run(egress, &udp, 0), ALLOW);
    let hop: Ipv6Addr = "fd00:ec2::254".parse().unwrap();
    // Segment routing header (type 4), one segment; type 2 (mobility); type 0.
    let mut srh = vec![2, 4, 0, 0, 0, 0, 0];
    srh.extend_from_slice(&hop.octets());
    let mut rh2 = vec![2, 2, 1, 0, 0, 0, 0];
    rh2.extend_from_slice(&hop.octets());
    let mut rh0 = vec![2, 0, 1, 0, 0, 0, 0];
    rh0.extend_from_slice(&hop.octets());
    for (what, body) in [("srh", &srh), ("type 2", &rh2), ("type 0", &rh0)] {
        assert_eq!(run(egress, &with_ipv6_ext(&udp, 43, body), 0), DROP, "{what} on UDP");
        assert_eq!(run(egress, &with_ipv6_ext(&syn, 43, body), 0), DROP, "{what} on TCP");
    }
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedSourceRoute), 6);
    // Behind a destination options header too.
    let dest_opts = [0u8, 1, 4, 0, 0, 0, 0];
    let routed = with_ipv6_ext(&udp, 43, &srh);
    let behind = with_ipv6_ext(&routed, 60, &dest_opts);
    assert_eq!(run(egress, &behind, 0), DROP, "routing header behind destination options");
    // Destination options alone do not route.
    assert_eq!(run(egress, &with_ipv6_ext(&udp, 60, &dest_opts), 0), ALLOW);
    // More extension headers than are followed: fail closed.
    let mut deep = udp;
    for _ in 0..7 {
        deep = with_ipv6_ext(&deep, 60, &dest_opts);
    }
    assert_eq!(run(egress, &deep, 0), DROP, "7 extension headers");
    assert_eq!(h.counter(Hook::SkbEgress, Reason::DeniedMalformed), 1);
}

#[test]
fn flow_counts_per_endpoint_with_rule_and_range() {
    use agent_common::flow::range;
    use portcullis::enforcer::FlowCounts;
    let Some(mut h) = harness(false) else { return };
    let flows = h.state.maps.counter_reader();
    h.learn("api.example.test", "203.0.113.10", 60);
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), ALLOW);
    assert_eq!(h.egress("203.0.113.10", L4::Tcp(443)), ALLOW);
    assert_eq!(h.egress("10.1.2.3", L4::Tcp(8080)), ALLOW);
    assert_eq!(h.egress("169.254.169.254", L4::Tcp(80)), DROP);
    assert_eq!(h.egress("::ffff:169.254.169.254", L4::Udp(80)), DROP);
    assert_eq!(h.egress("10.2.0.1", L4::Tcp(80)), DROP);
    assert_eq!(h.egress("203.0.113.99", L4::Tcp(443)), DROP);
    let raw = flows.flows.read(h.ep).expect("counted endpoint");
    let rules: Vec<String> = (1..=3).map(|i| format!("rule {i}")).collect();
    let c = FlowCounts::from_kernel(&raw, &rules);
    // Packets judged one by one are datagrams (connections are counted
    // by the connect hooks).
    let nonzero: Vec<(usize, u64)> = raw.slots.iter().copied().enumerate().filter(|(_, v)| *v != 0).collect();
    assert_eq!(c.datagrams[Reason::AllowedFqdn as usize], 2, "counted slots: {nonzero:?}");
    assert_eq!(c.datagrams[Reason::AllowedCidr as usize], 1);
    assert_eq!(c.datagrams[Reason::DeniedRange as usize], 3);
    assert_eq!(c.datagrams[Reason::DeniedDefault as usize], 1);
    assert_eq!(c.connections.iter().sum::<u64>(), 0);
    assert_eq!(c.rules, vec![("rule 1".to_owned(), 2), ("rule 2".to_owned(), 0), ("rule 3".to_owned(), 1)]);
    let by_range = |r: u32| c.ranges.iter().find(|(n, _)| *n == range::name(r)).unwrap().1;
    assert_eq!(by_range(range::METADATA), 2, "169.254.169.254, also IPv4-mapped, is counted as metadata");
    assert_eq!(by_range(range::PRIVATE), 1);
    assert_eq!(by_range(range::LINK_LOCAL), 0);
    // Bytes are the veth's to count (`veth_test_run`): none here.
    assert_eq!((c.egress_bytes, c.egress_packets), (0, 0));
}

/// A denied packet whose record finds `DENIED_EVENTS` full (nobody reads
/// it here; no rate limit): still dropped, and said once in the agent's
/// log through aya-log (the socket hooks report the same way).
#[test]
fn a_full_event_ring_reaches_the_agents_log() {
    let unlimited = Config { events_per_sec: u32::MAX, events_burst: u32::MAX, ..test_config(false) };
    let Some(mut h) = harness_with(unlimited) else { return };
    let mut log = h.dp.take_kernel_log().expect("the kernel log ring");
    let full = |h: &Harness| h.state.maps.counters().unwrap()[loss::EVENT_RINGBUF_FULL as usize];
    // Most of the way in one BPF_PROG_TEST_RUN (3,000 runs; the ring holds
    // 3,276 records), the rest one by one.
    let pkt = packet("198.18.1.2".parse().unwrap(), "203.0.113.20".parse().unwrap(), L4::Tcp(443));
    let ctx = [0u8; 192];
    let opts = TestRunOptions { data_in: Some(&pkt), ctx_in: Some(&ctx[..]), repeat: 3000, ..TestRunOptions::default() };
    assert_eq!(h.dp.egress_program().unwrap().test_run(opts).expect("test_run").return_value, DROP);
    assert_eq!(full(&h), 0, "3,000 records fit");
    let mut sent = 3000;
    while full(&h) == 0 && sent < 100_000 {
        assert_eq!(h.egress("203.0.113.20", L4::Tcp(443)), DROP);
        sent += 1;
    }
    assert_eq!(full(&h), 1, "the ring filled after {sent} denials");
    log.drain();
    let lines = log.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("DENIED_EVENTS ring full") && lines[0].contains(&format!("endpoint {}", h.ep)), "{lines:?}");
}
