//! A socket's allowance is bound to exactly what was judged, and the IP
//! destination of every packet is the one judged (issue: egress bypasses,
//! classes 1 and 2). Each attack is checked where it would arrive: a
//! listener on the deny target in "inet" records every datagram, and a
//! packet log of the pod's link records every packet leaving the pod. Each
//! runs once without enforcement too, to show it works there.

mod common;

use common::{
    Exec, s,
    target::{Recorder, TARGET_PORT, allow_ping_sockets, unenforced},
};
use portcullis_tests::{Bench, require_root};

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
  # A host the source-route attacks aim at (all its ports and protocols).
  - toCIDRs: ["203.0.113.20/32", "2001:db8:100::20/128"]
dns:
  servers: ["198.51.100.53"]
"#;

const META4: &str = "169.254.169.254";
const META6: &str = "fd00:ec2::254";
/// A "public" host the policy never allows.
const ELSEWHERE4: &str = "203.0.113.30";

/// Datagrams every `send` of `v` (an attack.py `send` object) failed for.
fn refused(v: &serde_json::Value, errno: &str) -> u64 {
    v["errors"][errno].as_u64().unwrap_or(0)
}

#[test]
fn a_reconnected_udp_or_ping_socket_gets_nothing_out() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    allow_ping_sockets(&bench);
    let port = TARGET_PORT.to_string();
    let meta4 = Recorder::listen(&bench, "udp", META4, TARGET_PORT);
    let meta6 = Recorder::listen(&bench, "udp", META6, TARGET_PORT);
    let elsewhere = Recorder::listen(&bench, "udp", ELSEWHERE4, TARGET_PORT);
    let link = Recorder::sniff_pod_link(&bench, "pod");
    let steps = [
        // Connected to its own loopback (allowed), then AF_UNSPEC, then the target.
        ("udp4", format!("$PY $ATTACK udp-reconnect 127.0.0.1 9 {META4} {port} 20")),
        ("udp4-any", format!("$PY $ATTACK udp-reconnect 127.0.0.1 9 {ELSEWHERE4} {port} 20")),
        ("udp6", format!("$PY $ATTACK udp-reconnect ::1 9 {META6} {port} 20")),
        // Ping sockets have no sendmsg hook: connected to loopback, then sendto.
        ("ping4", format!("$PY $ATTACK ping-sendto 127.0.0.1 {META4} 5")),
        ("ping6", format!("$PY $ATTACK ping-sendto ::1 {META6} 5")),
    ];
    let refs: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let r = Exec::new(&bench).policy(POLICY).steps(&refs);
    r.outcome.expect_code(0);
    for (step, n) in [("udp4", 20), ("udp4-any", 20), ("udp6", 20), ("ping4", 5)] {
        let v = r.sock(step);
        assert_eq!(v["connect_first"], "ok", "{step}: {v}");
        assert_eq!((v["send"]["sent"].as_u64(), refused(&v["send"], "EPERM")), (Some(0), n), "{step}: {v}");
    }
    // An IPv6 ping socket's sendto() reports success whatever happens to
    // the packet (net/ipv6/ping.c `ping_v6_sendmsg` ignores what
    // `icmpv6_push_pending_frames` returns): only the link can tell.
    assert_eq!(r.sock("ping6")["connect_first"], "ok");
    for (what, rec) in [("metadata v4", &meta4), ("metadata v6", &meta6), ("elsewhere", &elsewhere)] {
        assert_eq!(rec.arrivals(), Vec::<serde_json::Value>::new(), "{what} received datagrams");
    }
    for dst in [META4, META6, ELSEWHERE4] {
        assert_eq!(link.to(dst), Vec::<serde_json::Value>::new(), "packets to {dst} left the pod");
    }
    let log = r.log();
    for dst in [META4, META6] {
        log.expect(dst, TARGET_PORT, &[("reason", s("denied-range")), ("hook", s("skb-egress")), ("protocol", s("udp"))]);
    }
    log.expect(ELSEWHERE4, TARGET_PORT, &[("reason", s("denied-default")), ("hook", s("skb-egress"))]);
    log.expect(META4, 0, &[("reason", s("denied-range")), ("protocol", s("icmp"))]);
    log.expect(META6, 0, &[("reason", s("denied-range")), ("protocol", s("icmpv6"))]);

    // Without enforcement the same attacks arrive.
    for (dst, first) in [(META4, "127.0.0.1"), (ELSEWHERE4, "127.0.0.1"), (META6, "::1")] {
        let v = unenforced(&bench, &["udp-reconnect", first, "9", dst, &port, "3"]);
        assert_eq!(v["send"]["sent"], 3, "{v}");
    }
    assert!(!meta4.arrivals().is_empty() && !meta6.arrivals().is_empty() && !elsewhere.arrivals().is_empty());
    for (dst, first) in [(META4, "127.0.0.1"), (META6, "::1")] {
        let v = unenforced(&bench, &["ping-sendto", first, dst, "2"]);
        assert_eq!(v["send"]["sent"], 2, "{v}");
        assert!(!link.to(dst).is_empty(), "unenforced ping to {dst} not seen on the link");
    }
}

#[test]
fn source_routes_are_refused_and_never_leave() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let link = Recorder::sniff_pod_link(&bench, "pod");
    let port = TARGET_PORT.to_string();
    let steps = [
        // Sticky options on a TCP socket to an allowed host (unprivileged).
        ("tcp4", format!("$PY $ATTACK srr-tcp {META4} 203.0.113.20 8080")),
        ("tcp6", format!("$PY $ATTACK srr-tcp {META6} 2001:db8:100::20 8080")),
    ];
    let refs: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let r = Exec::new(&bench).policy(POLICY).steps(&refs);
    r.outcome.expect_code(0);
    for step in ["tcp4", "tcp6"] {
        let v = r.sock(step);
        // Refused at setsockopt; the connection itself (no route) is fine.
        assert_eq!((v["setsockopt"].as_str(), v["connect"].as_str()), (Some("EPERM"), Some("ok")), "{step}: {v}");
    }
    let log = r.log();
    let at_setsockopt = |proto: &str| {
        log.records
            .iter()
            .filter(|r| r["reason"] == "denied-source-route" && r["hook"] == "setsockopt" && r["protocol"] == proto)
            .count()
    };
    assert_eq!(at_setsockopt("tcp"), 2, "{}", log.raw);
    // Per datagram, in a control message (IP_RETOPTS: no setsockopt at
    // all; the kernel takes a source route there only with CAP_NET_RAW,
    // kept here): the packet check refuses each one.
    let cmsg = format!("$PY $ATTACK srr-udp-cmsg {META4} 203.0.113.20 {port} 5");
    // A raw packet to an allowed host whose route names the metadata
    // address next: no socket hook sees it, only the packet check.
    let raw = format!("$PY $ATTACK srr-raw 203.0.113.20 {META4} {port} 5");
    let r = Exec::new(&bench).policy(POLICY).arg("--keep-caps").steps(&[("udp4", &cmsg), ("raw", &raw)]);
    r.outcome.expect_code(0);
    let raw = r.sock("raw");
    assert_eq!((raw["send"]["sent"].as_u64(), refused(&raw["send"], "EPERM")), (Some(0), 5), "{raw}");
    let udp = r.sock("udp4");
    assert_eq!((udp["send"]["sent"].as_u64(), refused(&udp["send"], "EPERM")), (Some(0), 5), "{udp}");
    let log = r.log();
    let per_packet =
        log.records.iter().filter(|r| r["reason"] == "denied-source-route" && r["hook"] == "skb-egress" && r["dst"] == META4);
    assert_eq!(per_packet.count(), 5, "each datagram, with the first hop as its destination: {}", log.raw);
    for dst in [META4, META6] {
        assert_eq!(link.to(dst), Vec::<serde_json::Value>::new(), "source-routed packets to {dst} left the pod");
    }
    assert!(!link.arrivals().iter().any(|a| a["options"] == true), "a packet with IP options left the pod");
    let routed = log.records.iter().filter(|r| r["reason"] == "denied-source-route" && r["dst"] == "203.0.113.20");
    assert_eq!(routed.count(), 5, "the raw packets, by their IP destination: {}", log.raw);

    // Without enforcement the first hop is the packets' destination.
    let v = unenforced(&bench, &["srr-tcp", META4, "203.0.113.20", "8080"]);
    assert_eq!(v["setsockopt"], "ok", "{v}");
    let v = unenforced(&bench, &["srr-tcp", META6, "2001:db8:100::20", "8080"]);
    assert_eq!(v["setsockopt"], "ok", "{v}");
    let v = unenforced(&bench, &["srr-udp-cmsg", META4, "203.0.113.20", &port, "2"]);
    assert_eq!(v["send"]["sent"], 2, "{v}");
    let v = unenforced(&bench, &["srr-raw", "203.0.113.20", META4, &port, "2"]);
    assert_eq!(v["send"]["sent"], 2, "{v}");
    let with_options = link.arrivals().into_iter().filter(|a| a["options"] == true && a["dst"] == "203.0.113.20").count();
    assert!(with_options >= 2, "unenforced raw source routes: {:?}", link.arrivals());
    assert!(link.to(META4).len() >= 3, "unenforced: {:?}", link.arrivals());
    assert!(!link.to(META6).is_empty(), "unenforced v6: {:?}", link.arrivals());
}
