//! The DNS gate against a misbehaving trusted resolver (`servers/baddns.py`
//! on 198.51.100.54): only an answer that matches a query the endpoint sent
//! (client port, txid, question) is delivered and learned; forged, duplicate,
//! unsolicited, misdirected and wrong-question answers are dropped before
//! the process sees them and teach nothing. And a large EDNS0 answer
//! (200 A records, ~3.3 KB, IP-fragmented) is learned whole.

mod common;

use common::{Exec, Steps, s};
use portcullis_tests::{Bench, require_root};
use serde_json::Value;

/// Every name under example.test (any depth) on port 80, resolved only
/// through baddns: if a forged answer were learned, its address would open.
const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchPattern: "**.example.test"}]
    ports: [{port: 80}]
dns:
  servers: ["198.51.100.54"]
"#;

fn bench() -> Bench {
    Bench::builder().bad_dns(true).start().unwrap()
}

/// Runs `dnsq.py` (one query, then listening for more) and connects to each
/// address in `open` (must work) and `shut` (must get EPERM at connect).
fn run(bench: &Bench, mode: &str, dnsq_args: &str, open: &[&str], shut: &[&str]) -> Steps {
    bench.set_bad_dns_mode(mode).unwrap();
    let mut steps = vec![("q".to_owned(), format!("$PY $DNSQ 198.51.100.54 {dnsq_args}"))];
    for ip in open.iter().chain(shut) {
        steps.push((ip.to_string(), format!("$PY $SOCK tcp {ip} 80")));
    }
    let refs: Vec<(&str, &str)> = steps.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
    let r = Exec::new(bench).policy(POLICY).steps(&refs);
    r.outcome.expect_code(0);
    for ip in open {
        assert_eq!(r.sock(ip)["body"], format!("hello from {ip}:80\n"), "{mode}: {ip}");
    }
    for ip in shut {
        r.sock_errno(ip, "connect", "EPERM");
        // Not learned, and not even remembered as some name's address.
        r.log().expect(ip, 80, &[("reason", s("denied-default")), ("hook", s("connect4")), ("host", Value::Null)]);
    }
    assert_eq!(r.log().records.len(), shut.len(), "{mode}: {}", r.log().raw);
    r
}

fn answer(r: &Steps) -> Value {
    let v = r.sock("q");
    assert!(v["ok"] == true && v["answer"]["id_ok"] == true && v["answer"]["rcode"] == 0, "{v}");
    v
}

/// baddns really sent what the case is about (else the test proves nothing).
fn sent(bench: &Bench, what: &str) {
    let log = std::fs::read_to_string(bench.bad_dns_log_path().unwrap()).unwrap();
    assert!(log.contains(&format!("sent forged {what}")), "baddns log:\n{log}");
}

#[test]
fn forged_answers_with_another_txid_or_duplicated_teach_nothing() {
    if !require_root() {
        return;
    }
    let bench = bench();
    // .61 is the real answer; then another txid claims .62, a duplicate .64.
    let r = run(&bench, "spoof-extra", "spoof.example.test --wait 1", &["203.0.113.61"], &["203.0.113.62", "203.0.113.64"]);
    let v = answer(&r);
    assert_eq!(v["answer"]["ips"], serde_json::json!(["203.0.113.61"]), "{v}");
    assert_eq!(v["extra"], serde_json::json!([]), "forged answers reached the process: {v}");
    sent(&bench, "other-txid");
    sent(&bench, "duplicate");
}

#[test]
fn unsolicited_answer_for_a_name_never_asked_teaches_nothing() {
    if !require_root() {
        return;
    }
    let bench = bench();
    let r = run(&bench, "unsolicited", "ok.example.test --wait 1", &["203.0.113.67"], &["203.0.113.63"]);
    let v = answer(&r);
    assert_eq!(v["answer"]["ips"], serde_json::json!(["203.0.113.67"]), "{v}");
    assert_eq!(v["extra"], serde_json::json!([]), "{v}");
    sent(&bench, "unsolicited");
}

#[test]
fn answer_to_another_client_port_teaches_nothing() {
    if !require_root() {
        return;
    }
    let bench = bench();
    // The right txid and question, sent first to a second socket of the
    // same process (connected to the resolver, never asked anything).
    let r = run(&bench, "wrong-port", "ok.example.test --decoy --wait 1", &["203.0.113.67"], &["203.0.113.66"]);
    let v = answer(&r);
    assert_eq!(v["answer"]["ips"], serde_json::json!(["203.0.113.67"]), "{v}");
    assert_eq!(v["extra"], serde_json::json!([]), "the decoy socket got an answer: {v}");
    sent(&bench, "wrong-port");
}

#[test]
fn answer_with_the_right_txid_but_another_question_is_dropped() {
    if !require_root() {
        return;
    }
    let bench = bench();
    // The only answer names stolen.example.test (also allowed) -> .65: the
    // lookup gets nothing, and neither its address nor .67 is learned.
    let r = run(&bench, "wrong-question", "ok.example.test --timeout 2 --wait 0", &[], &["203.0.113.65", "203.0.113.67"]);
    let st = r.get("q");
    let v = r.sock("q");
    assert!(st.code == 124 && v["ok"] == false && v["extra"] == serde_json::json!([]), "{st:?}");
    sent(&bench, "wrong-question");
}

/// 200 A records (~3.3 KB, more than one 1500-byte packet): EDNS0 answers
/// are held and learned whole, the last records included.
#[test]
fn large_edns0_answer_is_learned_whole() {
    if !require_root() {
        return;
    }
    let bench = bench();
    let policy = "egress:\n  - toFQDNs: [{matchName: big.example.test}]\n    ports: [{port: 80}]\n\
                  dns:\n  servers: [\"198.51.100.54\"]\n";
    let r = Exec::new(&bench).policy(policy).steps(&[
        ("before", "$PY $SOCK tcp 192.0.2.150 80"),
        ("dig", "dig +bufsize=4096 +time=2 +tries=1 +short @198.51.100.54 big.example.test A"),
        ("150", "$PY $SOCK tcp 192.0.2.150 80"),
        ("200", "$PY $SOCK tcp 192.0.2.200 80"),
        ("201", "$PY $SOCK tcp 192.0.2.201 80"),
    ]);
    r.outcome.expect_code(0);
    r.sock_errno("before", "connect", "EPERM");
    let want: Vec<String> = (1..=200).map(|i| format!("192.0.2.{i}")).collect();
    let dig = r.get("dig");
    let got: Vec<&str> = dig.stdout.lines().collect();
    assert_eq!(got, want, "{dig:?}");
    assert_eq!(r.sock("150")["body"], "hello from 192.0.2.150:80\n");
    assert_eq!(r.sock("200")["body"], "hello from 192.0.2.200:80\n");
    r.sock_errno("201", "connect", "EPERM");
    let baddns = std::fs::read_to_string(bench.bad_dns_log_path().unwrap()).unwrap();
    assert!(baddns.contains("query big.example.test type 1") && baddns.contains("edns 4096"), "{baddns}");
    let log = r.log();
    log.expect("192.0.2.150", 80, &[("reason", s("denied-default")), ("host", Value::Null)]);
    log.expect("192.0.2.201", 80, &[("reason", s("denied-default")), ("host", Value::Null)]);
    assert_eq!(log.records.len(), 2, "{}", log.raw);
}
