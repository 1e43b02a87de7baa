//! Tests of `compile.rs` (kept apart to keep each file short).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::IpAddr;

use agent_common::CIDR_KIND_LOOPBACK;

use super::super::overrides::Overrides;
use super::super::ranges::canonical;
use super::*;

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml_str(yaml, "t.yaml").unwrap()
}

fn no_default() -> Result<Vec<SocketAddr>, Infallible> {
    Ok(vec!["198.51.100.53:53".parse().unwrap()])
}

fn compiled(yaml: &str) -> CompiledPolicy {
    compile(&policy(yaml), no_default).unwrap()
}

fn key(proto: u8, port: u16) -> PortKey {
    PortKey { proto, port }
}

fn tcp(lo: u16, hi: u16) -> PortRange {
    PortRange { proto: proto::TCP, port_lo: lo, port_hi: hi, ..PortRange::default() }
}

const ALL_RANGE: PortRange = PortRange { proto: proto::ANY, _pad: 0, port_lo: 0, port_hi: u16::MAX, rule: 0 };

/// The CIDRS entry the kernel's longest-prefix match would return.
fn lpm<'a>(c: &'a CompiledPolicy, ip: &str) -> Option<&'a CidrEntry> {
    let a = canonical(ip.parse::<IpAddr>().unwrap());
    c.cidr_entries.iter().filter(|e| e.net.contains(&a)).max_by_key(|e| e.net.prefix_len())
}

/// The entry for exactly `net` (IPv4 or IPv6 notation).
fn entry<'a>(c: &'a CompiledPolicy, net: &str) -> &'a CidrEntry {
    let n = canonical_net(net.parse().unwrap());
    c.cidr_entries.iter().find(|e| e.net == n).unwrap_or_else(|| panic!("no entry for {net}"))
}

/// The entry's port ranges without their rule ids (`rules_of` has those).
fn ports(e: &CidrEntry) -> Vec<PortRange> {
    e.value.ports[..e.value.nports as usize].iter().map(|r| PortRange { rule: 0, ..*r }).collect()
}

fn rules_of(e: &CidrEntry) -> Vec<u16> {
    e.value.ports[..e.value.nports as usize].iter().map(|r| r.rule).collect()
}

/// Every always-denied entry of a policy that opens none: the ranges and
/// the metadata hosts inside them.
fn deny_len() -> usize {
    kernel_deny_entries().len() + kernel_metadata_hosts().len()
}

#[test]
fn fqdn_rules_and_ports_for_name() {
    let c = compiled(
        r#"
egress:
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.cdn.example"}]
    ports: [{port: 443}, {port: 80}, {port: 443, protocol: tcp}]
  - toFQDNs: [{matchPattern: "**.example.com"}]
    ports: [{port: 53, protocol: ANY}]
  - toFQDNs: [{matchName: open.example.org}]
dns:
  allowNames: ["*.resolve-only.example"]
"#,
    );
    assert_eq!(c.fqdn_rules.len(), 3);
    assert_eq!(c.fqdn_rules[0].ports, [key(proto::TCP, 80), key(proto::TCP, 443)]);
    assert_eq!(c.fqdn_rules[2].ports, [PortKey::ALL]);
    assert_eq!(c.fqdn_rules[1].origin, RuleOrigin::Policy(1));

    // Union over rules 0 and 1, sorted and deduplicated.
    assert_eq!(
        c.ports_for_name("API.example.com."),
        [key(proto::TCP, 53), key(proto::TCP, 80), key(proto::TCP, 443), key(proto::UDP, 53), key(proto::SCTP, 53)]
    );
    assert_eq!(c.ports_for_name("x.cdn.example"), [key(proto::TCP, 80), key(proto::TCP, 443)]);
    assert_eq!(c.ports_for_name("a.b.example.com").len(), 3);
    assert_eq!(c.ports_for_name("open.example.org"), [PortKey::ALL]);
    assert!(c.ports_for_name("example.com").is_empty());
    assert!(c.ports_for_name("resolve-only.example").is_empty());

    assert!(c.may_resolve("x.cdn.example"));
    assert!(c.may_resolve("a.resolve-only.example"));
    assert!(c.ports_for_name("a.resolve-only.example").is_empty());
    assert!(!c.may_resolve("evil.test"));
    assert_eq!(c.dns_allow_names.len(), 1);
}

#[test]
fn all_ports_collapses_the_union() {
    let c = compiled(
        "egress:\n  - toFQDNs: [{matchName: a.example}]\n    ports: [{port: 443}]\n  - toFQDNs: [{matchPattern: \"*\"}]\n",
    );
    assert_eq!(c.ports_for_name("a.example"), [PortKey::ALL]);
}

#[test]
fn empty_policy_has_only_deny_entries() {
    let c = compiled("egress: []");
    let deny = kernel_deny_entries();
    assert_eq!(c.cidr_entries.len(), deny_len());
    for (net, kind) in deny {
        let e = c.cidr_entries.iter().find(|e| e.net == net).unwrap();
        assert_eq!(e.value, CidrValue { kind, range: range_class(net), ..CidrValue::default() });
        assert_ne!(e.value.range, 0, "{net} has a range class");
    }
    for host in kernel_metadata_hosts() {
        let e = c.cidr_entries.iter().find(|e| e.net == host).unwrap();
        assert_eq!((e.value.kind, e.value.range), (CIDR_KIND_DENY_RANGE, agent_common::flow::range::METADATA));
    }
    assert_eq!(lpm(&c, "169.254.169.254").unwrap().value.range, agent_common::flow::range::METADATA);
    assert_eq!(lpm(&c, "169.254.1.1").unwrap().value.range, agent_common::flow::range::LINK_LOCAL);
    assert_eq!(lpm(&c, "10.1.1.1").unwrap().value.range, agent_common::flow::range::PRIVATE);
    assert!(c.fqdn_rules.is_empty());
    assert!(!c.may_resolve("example.com"));
    assert_eq!(lpm(&c, "127.0.0.1").unwrap().value.kind, CIDR_KIND_LOOPBACK);
    assert!(lpm(&c, "8.8.8.8").is_none());
}

#[test]
fn nested_cidrs_union_ports_and_merge_ranges() {
    let c = compiled(
        r#"
egress:
  - toCIDRs: ["192.0.2.0/24"]
    ports: [{port: 80}, {port: 81}, {port: 82}, {port: 8443}]
  - toCIDRs: ["192.0.2.128/25", "2001:db8::/32"]
    ports: [{port: 443}, {port: 53, protocol: any}]
"#,
    );
    let outer = entry(&c, "192.0.2.0/24");
    assert_eq!(outer.value.kind, CIDR_KIND_ALLOW);
    assert_eq!(outer.value.inside_deny_range, 0);
    assert_eq!(ports(outer), [tcp(80, 82), tcp(8443, 8443)]);

    let inner = entry(&c, "192.0.2.128/25");
    let udp53 = PortRange { proto: proto::UDP, port_lo: 53, port_hi: 53, ..PortRange::default() };
    let sctp53 = PortRange { proto: proto::SCTP, ..udp53 };
    assert_eq!(ports(inner), [tcp(53, 53), tcp(80, 82), tcp(443, 443), tcp(8443, 8443), udp53, sctp53]);
    // The IPv6 prefix of the same rule inherits nothing from the IPv4 /24.
    assert_eq!(ports(entry(&c, "2001:db8::/32")), [tcp(53, 53), tcp(443, 443), udp53, sctp53]);
    assert_eq!(lpm(&c, "192.0.2.200").unwrap().net, inner.net);
    assert_eq!(lpm(&c, "192.0.2.1").unwrap().net, outer.net);
}

#[test]
fn rule_equal_to_a_deny_range_replaces_it() {
    let c = compiled("egress:\n  - toCIDRs: [\"10.0.0.0/8\"]\n    ports: [{port: 5432}]\n");
    assert_eq!(c.cidr_entries.len(), deny_len(), "10/8 replaced by the allow entry");
    let e = entry(&c, "10.0.0.0/8");
    assert_eq!(e.value.kind, CIDR_KIND_ALLOW);
    assert_eq!(e.value.inside_deny_range, 1);
    assert_eq!(ports(e), [tcp(5432, 5432)]);
    assert_eq!(lpm(&c, "10.9.8.7").unwrap().value.kind, CIDR_KIND_ALLOW);
    // The NAT64 form of 10/8 stays denied: only the spelled prefix opens.
    assert_eq!(lpm(&c, "64:ff9b::a09:807").unwrap().value.kind, CIDR_KIND_DENY_RANGE);
}

#[test]
fn broader_rule_does_not_open_deny_ranges() {
    let c = compiled("egress:\n  - toCIDRs: [\"0.0.0.0/0\", \"::/0\"]\n    ports: [{port: 443}]\n");
    assert_eq!(c.cidr_entries.len(), deny_len() + 2);
    let all4 = entry(&c, "0.0.0.0/0");
    assert_eq!(all4.net.to_string(), "::ffff:0.0.0.0/96");
    assert_eq!(all4.value.inside_deny_range, 0);
    assert_eq!(lpm(&c, "8.8.8.8").unwrap().net, all4.net);
    for denied in ["10.1.2.3", "169.254.169.254", "100.100.100.200", "fd00:ec2::254", "64:ff9b::a9fe:a9fe"] {
        assert_eq!(lpm(&c, denied).unwrap().value.kind, CIDR_KIND_DENY_RANGE, "{denied}");
    }
    assert_eq!(lpm(&c, "127.0.0.1").unwrap().value.kind, CIDR_KIND_LOOPBACK);
    assert_eq!(lpm(&c, "2001:db8::1").unwrap().value.kind, CIDR_KIND_ALLOW);
}

#[test]
fn deny_range_cuts_off_enclosing_rule_ports() {
    let c = compiled(
        r#"
egress:
  - toCIDRs: ["0.0.0.0/0"]
    ports: [{port: 443}]
  - toCIDRs: ["10.1.0.0/16"]
    ports: [{port: 80}]
  - toCIDRs: ["172.16.0.0/12"]
    ports: [{port: 22}]
  - toCIDRs: ["172.16.5.0/24"]
"#,
    );
    let e = entry(&c, "10.1.0.0/16");
    assert_eq!(ports(e), [tcp(80, 80)], "0/0 must not add 443 inside 10/8");
    assert_eq!(e.value.inside_deny_range, 1);
    // 172.16/12 is opened explicitly, so it reaches the /24 inside it; the
    // /24 allows everything anyway.
    assert_eq!(ports(entry(&c, "172.16.5.0/24")), [ALL_RANGE]);
    let c = compiled(
        "egress:\n  - toCIDRs: [\"172.16.0.0/12\"]\n    ports: [{port: 22}]\n  - toCIDRs: [\"172.16.5.0/24\"]\n    ports: [{port: 80}]\n",
    );
    assert_eq!(ports(entry(&c, "172.16.5.0/24")), [tcp(22, 22), tcp(80, 80)]);
    assert_eq!(entry(&c, "172.16.5.0/24").value.inside_deny_range, 1);
}

#[test]
fn no_ports_is_one_any_range_and_absorbs_inherited_ports() {
    let c = compiled("egress:\n  - toCIDRs: [\"203.0.113.0/24\"]\n  - toCIDRs: [\"203.0.113.8/29\"]\n    ports: [{port: 22}]\n");
    assert_eq!(ports(entry(&c, "203.0.113.0/24")), [ALL_RANGE]);
    assert_eq!(ports(entry(&c, "203.0.113.8/29")), [ALL_RANGE]);
}

#[test]
fn same_prefix_in_several_spellings_is_one_entry() {
    let c = compiled(
        "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{port: 80}]\n  - toCIDRs: [\"::ffff:192.0.2.0/120\", \"192.0.2.0/24\"]\n    ports: [{port: 443}]\n",
    );
    let n = canonical_net("192.0.2.0/24".parse().unwrap());
    assert_eq!(c.cidr_entries.iter().filter(|e| e.net == n).count(), 1);
    assert_eq!(ports(entry(&c, "192.0.2.0/24")), [tcp(80, 80), tcp(443, 443)]);
    let mut nets: Vec<_> = c.cidr_entries.iter().map(|e| e.net).collect();
    let sorted = nets.clone();
    nets.sort();
    nets.dedup();
    assert_eq!(nets, sorted, "entries must be sorted and unique");
}

#[test]
fn too_many_ports_names_the_rule() {
    let ports9: Vec<String> = (0..9).map(|i| format!("{{port: {}}}", 1000 + 2 * i)).collect();
    let yaml = format!("egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{}]\n", ports9.join(", "));
    let e = compile(&policy(&yaml), no_default).unwrap_err().to_string();
    assert_eq!(e, "egress[0].toCIDRs[0] (192.0.2.0/24) needs 9 port ranges; the kernel holds at most 8 per CIDR");
    // 8 fits; adjacent ports merge, so 20 consecutive ports are one range.
    let ports8 = ports9[..8].join(", ");
    let yaml = format!("egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{ports8}]\n");
    assert_eq!(compile(&policy(&yaml), no_default).unwrap().cidr_entries.len(), deny_len() + 1);
    // ANY triples the ranges, and inherited ports count too.
    let yaml = "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{port: 1, protocol: ANY}, {port: 3, protocol: ANY}]\n  - toCIDRs: [\"192.0.2.0/25\"]\n    ports: [{port: 5, protocol: ANY}]\n";
    let e = compile(&policy(yaml), no_default).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "egress[1].toCIDRs[0] (192.0.2.0/25) needs 9 port ranges (its own ports plus those of enclosing egress[0].toCIDRs[0])"
        ),
        "{e}"
    );
}

#[test]
fn dns_servers_default_and_dedup() {
    let called = Cell::new(false);
    let default = || {
        called.set(true);
        Ok::<_, Infallible>(vec!["10.96.0.10:53".parse().unwrap(), "10.96.0.10:53".parse().unwrap()])
    };
    let c = compile(&policy("egress: []"), default).unwrap();
    assert!(called.get());
    assert_eq!(c.dns_servers, ["10.96.0.10:53".parse::<SocketAddr>().unwrap()]);

    let called = Cell::new(false);
    let default = || {
        called.set(true);
        Ok::<_, Infallible>(vec![])
    };
    let c = compile(&policy("dns: {servers: [\"198.51.100.1\", \"198.51.100.1:53\", \"[2001:db8::1]:5353\"]}"), default).unwrap();
    assert!(!called.get(), "explicit servers must not read resolv.conf");
    assert_eq!(c.dns_servers.len(), 2);
    assert!(compile(&policy("dns: {servers: []}"), default).unwrap().dns_servers.is_empty());

    let e = compile(&policy("egress: []"), || Ok::<_, Infallible>(vec![])).unwrap_err();
    assert!(matches!(e, PolicyError::Compile(CompileError::NoDefaultDns)), "{e}");
    let e = compile(&policy("egress: []"), || Err::<Vec<SocketAddr>, _>("no resolv.conf")).unwrap_err();
    assert_eq!(e.to_string(), "dns.servers is not set and reading the system resolvers failed: no resolv.conf");
}

#[test]
fn override_rules_compile_with_their_flag_as_label() {
    let mut p = policy("egress: []\ndns: {servers: [\"198.51.100.53\"]}");
    let o = Overrides::from_flags(&["**.example.com:443"], &["[2001:db8::/32]:22"], &[]).unwrap();
    p.apply_overrides(&o);
    let c = compile(&p, no_default).unwrap();
    assert_eq!(c.ports_for_name("a.example.com"), [key(proto::TCP, 443)]);
    assert_eq!(ports(entry(&c, "2001:db8::/32")), [tcp(22, 22)]);
}

#[test]
fn system_resolvers_plugs_in() {
    // Explicit servers: system_resolvers is type-checked here but not called.
    let c = compile(&policy("dns: {servers: [\"198.51.100.53\"]}"), super::super::system_resolvers).unwrap();
    assert_eq!(c.dns_servers, ["198.51.100.53:53".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn rule_ids_follow_policy_order_and_name_the_entry() {
    let c = compiled(
        r#"
egress:
  - toFQDNs: [{matchName: api.example.com}]
    ports: [{port: 443}]
  - toCIDRs: ["192.0.2.0/24"]
    ports: [{port: 80}]
  - toCIDRs: ["192.0.2.0/24"]
    ports: [{port: 81}, {port: 443}]
  - toFQDNs: [{matchPattern: "*.example.com"}]
"#,
    );
    assert_eq!(c.rules.len(), 4);
    assert_eq!(c.rule_text(1), Some("egress[0] toFQDNs api.example.com ports 443/tcp"));
    assert!(c.rule_text(2).unwrap().starts_with("egress[1] toCIDRs 192.0.2.0/24"));
    assert_eq!(c.rule_text(5), None);
    assert_eq!(c.rule_text(0), None);
    // 80 and 81 are adjacent but from different rules: two ranges.
    let e = entry(&c, "192.0.2.0/24");
    assert_eq!(ports(e), [tcp(80, 80), tcp(81, 81), tcp(443, 443)]);
    assert_eq!(rules_of(e), [2, 3, 3]);
    assert_eq!(c.rule_for("api.example.com", proto::TCP, 443), 1);
    assert_eq!(c.rule_for("api.example.com", proto::TCP, 80), 4, "the wildcard rule allows every port");
    assert_eq!(c.rule_for("www.example.com", proto::UDP, 53), 4);
    assert_eq!(c.rule_for("other.org", proto::TCP, 443), 0);
}

#[test]
fn an_allow_as_wide_as_link_local_opens_metadata_as_before() {
    let c = compiled("egress:\n  - toCIDRs: [\"169.254.0.0/16\"]\n");
    assert_eq!(lpm(&c, "169.254.169.254").unwrap().value.kind, CIDR_KIND_ALLOW);
    let c = compiled("egress:\n  - toCIDRs: [\"0.0.0.0/0\"]\n");
    let e = lpm(&c, "169.254.169.254").unwrap();
    assert_eq!((e.value.kind, e.value.range), (CIDR_KIND_DENY_RANGE, agent_common::flow::range::METADATA));
}
