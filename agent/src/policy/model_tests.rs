//! Tests of `model.rs` (kept apart to keep each file short).

use super::*;

const EXAMPLE: &str = r#"
egress:
  - toFQDNs:
      - matchName: api.openai.com
      - matchPattern: "*.slack.com"
    ports: [{port: 443, protocol: TCP}]
  - toCIDRs: ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
    ports: [{port: 8080}, {port: 53, protocol: udp}, {port: 9, protocol: Any}]
dns:
  servers: ["198.51.100.53", "198.51.100.54:5353", "[2001:db8::53]:53", "2001:db8::54"]
  allowNames: ["**.internal.example"]
"#;

fn load(yaml: &str) -> Result<Policy, LoadError> {
    Policy::from_yaml_str(yaml, "test.yaml")
}

fn err(yaml: &str) -> String {
    match load(yaml) {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parses_example() {
    let p = load(EXAMPLE).unwrap();
    assert_eq!(p.egress.len(), 2);
    let r0 = &p.egress[0];
    assert_eq!(r0.origin, RuleOrigin::Policy(0));
    match &r0.to {
        Destination::Fqdns(s) => {
            assert_eq!(s.len(), 2);
            assert!(s[0].matches("API.openai.com."));
            assert!(s[1].matches("x.slack.com"));
            assert!(!s[1].matches("slack.com"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r0.ports, [Port { port: 443, protocol: Protocol::Tcp }]);
    let r1 = &p.egress[1];
    match &r1.to {
        Destination::Cidrs(n) => {
            let s: Vec<String> = n.iter().map(|n| n.to_string()).collect();
            assert_eq!(s, ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r1.ports,
        [
            Port { port: 8080, protocol: Protocol::Tcp },
            Port { port: 53, protocol: Protocol::Udp },
            Port { port: 9, protocol: Protocol::Any },
        ]
    );
    let servers: Vec<String> = p.dns.servers.unwrap().iter().map(|s| s.to_string()).collect();
    assert_eq!(servers, ["198.51.100.53:53", "198.51.100.54:5353", "[2001:db8::53]:53", "[2001:db8::54]:53"]);
    assert!(p.dns.allow_names[0].matches("a.b.internal.example"));
}

#[test]
fn empty_and_minimal_policies() {
    for yaml in ["{}", "egress: []", "egress: []\ndns: {}"] {
        let p = load(yaml).unwrap();
        assert!(p.egress.is_empty(), "{yaml}");
        assert_eq!(p.dns.servers, None, "{yaml}");
    }
    for yaml in ["", "# nothing\n", "---\n", "~"] {
        assert!(matches!(load(yaml), Err(LoadError::Empty { .. })), "{yaml:?}");
    }
    assert!(err("").contains("test.yaml: the policy is empty"));
    let p = load("dns: {servers: []}").unwrap();
    assert_eq!(p.dns.servers, Some(vec![]));
    let p = load("egress:\n  - toCIDRs: [\"0.0.0.0/0\"]\n").unwrap();
    assert!(p.egress[0].ports.is_empty());
}

#[test]
fn unknown_fields_are_named() {
    let e = err("egress:\n  - toFQDNs: [{matchName: a.com}]\n    port: 443\n");
    assert!(e.contains("port") && e.contains("test.yaml"), "{e}");
    let e = err("egres: []\n");
    assert!(e.contains("egres"), "{e}");
    let e = err("egress:\n  - toFQDNs: [{matchname: a.com}]\n");
    assert!(e.contains("matchname"), "{e}");
    let e = err("dns: {server: [\"1.1.1.1\"]}\n");
    assert!(e.contains("server"), "{e}");
}

#[test]
fn syntax_errors_have_a_location() {
    let e = err("egress:\n  - toCIDRs: [\"192.0.2.0/24\"\n");
    assert!(e.starts_with("test.yaml: invalid policy:"), "{e}");
    assert!(e.contains("line") || e.contains(":2:") || e.contains(":3:"), "{e}");
}

#[test]
fn bad_values_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n  - toCIDRs: [\"10.0.0/8\"]\n",
            "test.yaml: egress[1].toCIDRs[0]: invalid CIDR \"10.0.0/8\"",
        ),
        (
            "egress:\n  - toCIDRs: [\"10.0.0.1/8\"]\n",
            "egress[0].toCIDRs[0]: CIDR \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)",
        ),
        ("egress:\n  - toCIDRs: [\"192.0.2.0/33\"]\n", "egress[0].toCIDRs[0]: invalid CIDR"),
        ("egress:\n  - toCIDRs: [\"x\"]\n    ports: [{port: 0}]\n", "egress[0].toCIDRs[0]"),
        (
            "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{port: 443}, {port: 0}]\n",
            "egress[0].ports[1].port: port 0 is out of range 1..=65535",
        ),
        (
            "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{port: 70000}]\n",
            "egress[0].ports[0].port: port 70000 is out of range",
        ),
        (
            "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{port: -1}]\n",
            "egress[0].ports[0].port: port -1 is out of range",
        ),
        (
            "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: [{port: 1, protocol: icmp}]\n",
            "egress[0].ports[0].protocol: unknown protocol \"icmp\"",
        ),
        (
            "egress:\n  - toCIDRs: [\"192.0.2.0/24\"]\n    ports: []\n",
            "egress[0].ports: empty list (omit the field instead to allow all ports)",
        ),
        (
            "egress:\n  - toFQDNs: [{matchPattern: \"a*.b\"}]\n",
            "egress[0].toFQDNs[0].matchPattern: \"a*.b\": '*' or '**' may only be the whole leftmost label",
        ),
        (
            "egress:\n  - toFQDNs: [{matchName: \"*.b.com\"}]\n",
            "egress[0].toFQDNs[0].matchName: \"*.b.com\": '*' is not allowed in matchName",
        ),
        (
            "egress:\n  - toFQDNs: [{matchName: a.com, matchPattern: b.com}]\n",
            "egress[0].toFQDNs[0]: set exactly one of matchName or matchPattern (found both)",
        ),
        ("egress:\n  - toFQDNs: [{}]\n", "egress[0].toFQDNs[0]: set exactly one of matchName or matchPattern (found neither)"),
        (
            "egress:\n  - toFQDNs: [{matchName: a.com}]\n    toCIDRs: [\"192.0.2.0/24\"]\n",
            "egress[0]: set exactly one of toFQDNs, toCIDRs or toServices (found several)",
        ),
        ("egress:\n  - ports: [{port: 443}]\n", "egress[0]: set exactly one of toFQDNs, toCIDRs or toServices (found none)"),
        ("egress:\n  - toServices: []\n", "egress[0].toServices: empty list"),
        (
            "egress:\n  - toServices: [{namespace: Kube-System, name: dns}]\n",
            "egress[0].toServices[0].namespace: \"Kube-System\" is not a DNS label",
        ),
        (
            "egress:\n  - toServices: [{namespace: a, name: b}]\n    toCIDRs: [192.0.2.0/24]\n",
            "egress[0]: set exactly one of toFQDNs, toCIDRs or toServices (found several)",
        ),
        ("egress:\n  - toFQDNs: []\n", "egress[0].toFQDNs: empty list"),
        ("egress:\n  - toCIDRs: []\n", "egress[0].toCIDRs: empty list"),
        ("dns: {servers: [\"1.1.1.1\", \"dns.google\"]}\n", "dns.servers[1]: invalid DNS server \"dns.google\""),
        ("dns: {servers: [\"1.1.1.1:0\"]}\n", "dns.servers[0]: DNS server \"1.1.1.1:0\": port 0"),
        ("dns: {servers: [\"2001:db8::1:99999\"]}\n", "dns.servers[0]: invalid DNS server"),
        ("dns: {allowNames: [\"x.*\"]}\n", "dns.allowNames[0]: \"x.*\""),
    ];
    for (yaml, want) in cases {
        let e = err(yaml);
        assert!(e.contains(want), "\n got: {e}\nwant: {want}");
    }
}

#[test]
fn file_loading() {
    let dir = std::env::temp_dir().join(format!("portcullis-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, EXAMPLE).unwrap();
    assert_eq!(Policy::from_file(&good).unwrap(), load(EXAMPLE).unwrap());

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "egress:\n  - toCIDRs: [\"10.0.0/8\"]\n").unwrap();
    let e = Policy::from_file(&bad).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: egress[0].toCIDRs[0]", bad.display())), "{e}");

    let missing = dir.join("missing.yaml");
    let e = Policy::from_file(&missing).unwrap_err();
    assert!(matches!(e, LoadError::Read { .. }));
    assert!(e.to_string().contains("missing.yaml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn spec_round_trips_through_yaml() {
    let spec: PolicySpec = serde_saphyr::from_str(EXAMPLE).unwrap();
    let text = serde_saphyr::to_string(&spec).unwrap();
    assert!(text.contains("toFQDNs") && text.contains("allowNames"), "{text}");
    let again: PolicySpec = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(spec, again);
}

#[test]
fn value_parsers() {
    assert_eq!(parse_protocol("sctp").unwrap(), Protocol::Sctp);
    assert!(parse_protocol("").is_err());
    assert_eq!(parse_cidr("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
    assert!(matches!(parse_cidr("2001:db8::1/32"), Err(FieldError::HostBits { .. })));
    assert_eq!(parse_dns_server("[::1]:5300").unwrap().to_string(), "[::1]:5300");
    assert!(parse_dns_server("1.1.1.1:").is_err());
    assert!(parse_dns_server("[1.1.1.1]:53").is_err());
}
