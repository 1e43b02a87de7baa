//! Every IP protocol is default-deny: UDP (`sendto`), ICMP echo (ping) and a
//! raw socket cannot reach a host the policy does not allow, and the host
//! never sees a packet; a CIDR rule without ports opens all protocols.

mod common;

use common::{Exec, s};
use portcullis_tests::{Bench, require_root};

const POLICY: &str = common::API_POLICY;

/// Counters from inet's /proc/net/snmp (`Icmp`, `Udp`) and snmp6.
fn inet_counter(bench: &Bench, file: &str, table: &str, field: &str) -> u64 {
    let out = bench.cmd_in_inet("cat").arg(file).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    if file.ends_with("snmp6") {
        return text
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == field).then(|| it.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("{field} not in {file}"));
    }
    let mut rows = text.lines().filter(|l| l.starts_with(&format!("{table}:")));
    let (head, vals) = (rows.next().unwrap(), rows.next().unwrap());
    let i = head.split_whitespace().position(|h| h == field).unwrap();
    vals.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Seen {
    echos: u64,
    echos6: u64,
    udp: u64,
    udp6: u64,
}

fn seen(bench: &Bench) -> Seen {
    Seen {
        echos: inet_counter(bench, "/proc/net/snmp", "Icmp", "InEchos"),
        echos6: inet_counter(bench, "/proc/net/snmp6", "", "Icmp6InEchos"),
        udp: inet_counter(bench, "/proc/net/snmp", "Udp", "InDatagrams"),
        udp6: inet_counter(bench, "/proc/net/snmp6", "", "Udp6InDatagrams"),
    }
}

/// The same clients for both tests. Plain `ping` first connect()s a UDP
/// socket to learn its source address; with the source given (`-I`) it
/// sends the echo request straight away.
fn steps(bench: &Bench) -> Vec<(&'static str, String)> {
    let ping = std::process::Command::new("sh").args(["-c", "command -v ping"]).output();
    assert!(ping.is_ok_and(|o| o.status.success()), "ping not found: install iputils-ping (Debian)");
    let (v4, v6) = (bench.pod_v4("pod"), bench.pod_v6("pod"));
    vec![
        ("udp", "$PY $SOCK udp 203.0.113.20 9999".into()),
        ("udp6", "$PY $SOCK udp 2001:db8:100::20 9999".into()),
        ("socat", "echo hi | socat -t1 - UDP:203.0.113.20:9999".into()),
        ("ping", "ping -n -c1 -W1 203.0.113.20".into()),
        ("ping6", "ping -n -6 -c1 -W1 2001:db8:100::20".into()),
        ("ping-src", format!("ping -n -c1 -W1 -I {v4} 203.0.113.20")),
        ("ping6-src", format!("ping -n -6 -c1 -W1 -I {v6} 2001:db8:100::20")),
        ("raw", "$PY $SOCK raw-icmp 203.0.113.20".into()),
    ]
}

fn run_steps(e: Exec<'_>, bench: &Bench) -> common::Steps {
    let st = steps(bench);
    let refs: Vec<(&str, &str)> = st.iter().map(|(n, c)| (*n, c.as_str())).collect();
    e.steps(&refs)
}

#[test]
fn udp_icmp_and_raw_sockets_are_denied() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let before = seen(&bench);
    // CAP_NET_RAW kept: raw and ICMP sockets are judged per packet too.
    let r = run_steps(Exec::new(&bench).policy(POLICY).arg("--keep-caps"), &bench);
    r.outcome.expect_code(0);
    let after = seen(&bench);
    r.sock_errno("udp", "sendto", "EPERM");
    r.sock_errno("udp6", "sendto", "EPERM");
    // socat connect()s its UDP socket: refused at connect() or at write().
    let socat = r.fails("socat", 1, 1000);
    assert!(socat.stderr.contains("Operation not permitted") && socat.stdout.is_empty(), "{socat:?}");
    // Plain ping first connect()s a UDP socket to find its source address:
    // refused there (exit 2), or (UDP connect judged per datagram) the echo
    // request itself is dropped on the way out (exit 1, no reply).
    let mut pings_sent = [0usize; 2];
    for (i, step) in ["ping", "ping6"].into_iter().enumerate() {
        let st = r.get(step);
        if st.code == 2 {
            assert!(st.stderr.contains("connect: Operation not permitted") && st.ms < 1000, "{st:?}");
        } else {
            assert!(st.code == 1 && st.stdout.contains("1 packets transmitted, 0 received"), "{st:?}");
            pings_sent[i] = 1;
        }
    }
    // With a source address: the echo request is dropped on the way out.
    for step in ["ping-src", "ping6-src"] {
        let st = r.fails(step, 1, 2500);
        assert!(st.stdout.contains("1 packets transmitted, 0 received"), "{st:?}");
    }
    // A raw socket: refused at sendto, or the echo goes nowhere.
    let raw = r.sock("raw");
    assert_eq!(raw["ok"], false, "{raw}");
    assert!(raw["errno"] == "EPERM" || (raw["stage"] == "recv" && r.get("raw").code == 124), "{raw}");
    // Nothing arrived: no echo request, no datagram.
    assert_eq!(before, after, "inet saw traffic");

    let log = r.log();
    log.expect_well_formed("exec-");
    let denied = |proto: &str| vec![("verdict", s("blocked")), ("reason", s("denied-default")), ("protocol", s(proto))];
    let mut udp = denied("udp");
    udp.extend([("hook", s("sendmsg4")), ("comm", s("python3"))]);
    log.expect("203.0.113.20", 9999, &udp);
    udp[3] = ("hook", s("sendmsg6"));
    log.expect("2001:db8:100::20", 9999, &udp);
    let mut socat = denied("udp");
    socat.push(("comm", s("socat")));
    let rec = log.expect("203.0.113.20", 9999, &socat);
    assert!(rec["hook"] == "connect4" || rec["hook"] == "skb-egress", "{rec}");
    let mut probe = denied("udp");
    probe.extend([("hook", s("connect4")), ("comm", s("ping"))]);
    if pings_sent[0] == 0 {
        log.expect("203.0.113.20", 1025, &probe);
    }
    if pings_sent[1] == 0 {
        probe[3] = ("hook", s("connect6"));
        log.expect("2001:db8:100::20", 1025, &probe);
    }
    // Packets without a socket hook: judged per packet (no process context).
    let mut icmp = denied("icmp");
    icmp.extend([("hook", s("skb-egress")), ("pid", serde_json::Value::Null)]);
    // ping -I and the raw socket (and plain ping if it got to send).
    assert_eq!(log.to("203.0.113.20", 0).len(), 2 + pings_sent[0], "{}", log.raw);
    log.expect("203.0.113.20", 0, &icmp);
    icmp[2] = ("protocol", s("icmpv6"));
    assert_eq!(log.to("2001:db8:100::20", 0).len(), 1 + pings_sent[1], "{}", log.raw);
    log.expect("2001:db8:100::20", 0, &icmp);
    assert_eq!(log.records.len(), 8, "{}", log.raw);
    assert!(log.records.iter().all(|r| r["reason"] == "denied-default"), "{}", log.raw);
}

#[test]
fn cidr_without_ports_opens_every_protocol() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let before = seen(&bench);
    let r = Exec::new(&bench).policy(POLICY).args(&[
        "--keep-caps",
        "--allow-cidr",
        "203.0.113.20/32",
        "--allow-cidr",
        "2001:db8:100::20/128",
    ]);
    let r = run_steps(r, &bench);
    r.outcome.expect_code(0);
    let after = seen(&bench);
    assert_eq!(r.sock("udp")["body"], "portcullis-udp");
    assert_eq!(r.sock("udp6")["body"], "portcullis-udp");
    r.ok("socat", "hi\n");
    for step in ["ping", "ping6", "ping-src", "ping6-src"] {
        let st = r.get(step);
        assert!(st.code == 0 && st.stdout.contains(" 0% packet loss"), "{st:?}");
    }
    assert_eq!(r.sock("raw")["ok"], true, "{:?}", r.get("raw"));
    // The counters used above do move when packets arrive.
    let want = Seen { echos: before.echos + 3, echos6: before.echos6 + 2, udp: before.udp + 2, udp6: before.udp6 + 1 };
    assert_eq!(after, want, "before: {before:?}");
    assert!(r.log().records.is_empty(), "{}", r.log().raw);
}
