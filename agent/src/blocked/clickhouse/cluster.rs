//! `portcullis blocked --clickhouse URL`: the filters of the node's query
//! (`query/filter.rs`) as a SQL `WHERE` over every node's records, with
//! the same meaning: a folded record matches a time range it overlaps, a
//! `lost` record matches no destination filter and only `--verdict
//! blocked`, `--pod` is a prefix of the pod (else the endpoint), `--host`
//! a case-insensitive glob, `--to-ip` a CIDR (IPv4 networks hold IPv4
//! destinations only). Every user-given string is a quoted literal
//! (`clickhouse::sql`), every number is formatted from an integer, the
//! table name is a checked identifier, and the statement goes as a GET,
//! which ClickHouse runs read-only. The rows read back are checked against
//! the same filter again (`Filter::matches`).

use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::row::{COLUMNS, Row, hex};
use crate::{
    blocked::query::{entry::Entry, filter::Filter},
    clickhouse::sql::{like_literal, string},
};

/// Milliseconds since the epoch of `t`, rounded up (a record at a whole
/// millisecond is at or after `t` exactly when its millisecond is at or
/// after this).
fn ms_ceil(t: SystemTime) -> u128 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_nanos().div_ceil(1_000_000)
}

fn ms_floor(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// A `--host` glob as a `LIKE` pattern on the lower-cased host.
fn like(chars: &[char]) -> String {
    let mut out = String::new();
    for c in chars {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            c => out.push_str(&like_literal(&c.to_string())),
        }
    }
    out
}

/// The network as a range of `dst_hex` strings, and which family of
/// destination text it may hold.
fn cidr(n: &IpNet) -> String {
    let (lo, hi) = (hex(n.network()), hex(n.broadcast()));
    let family = match n {
        IpNet::V4(_) => "position(dst, ':') = 0",
        IpNet::V6(_) => "position(dst, ':') > 0",
    };
    format!("dst != '' AND {family} AND dst_hex >= {} AND dst_hex <= {}", string(&lo), string(&hi))
}

/// The `WHERE` condition of a filter (`1` for none).
pub fn condition(f: &Filter) -> String {
    let mut all: Vec<String> = Vec::new();
    if let Some(ns) = &f.namespace {
        all.push(if ns.is_empty() { "0".into() } else { format!("namespace = {}", string(ns)) });
    }
    if let Some(p) = &f.pod {
        all.push(format!("startsWith(if(pod != '', pod, endpoint), {})", string(p)));
    }
    if let Some(s) = f.since {
        all.push(format!("if(last_ms != 0, last_ms, time_ms) >= {}", ms_ceil(s)));
    }
    if let Some(u) = f.until {
        all.push(format!("if(first_ms != 0, first_ms, time_ms) <= {}", ms_floor(u)));
    }
    if !f.reasons.is_empty() {
        let list: Vec<String> = f.reasons.iter().map(|r| string(r)).collect();
        all.push(format!("reason IN ({})", list.join(", ")));
    }
    // A lost record: who and why only.
    let on_destination = f.host.is_some() || f.to_ip.is_some() || f.port.is_some();
    let lost_ok = !on_destination && f.verdict.as_deref().is_none_or(|v| v == "blocked");
    let mut attempt = vec!["kind != 'lost'".to_owned()];
    if let Some(v) = &f.verdict {
        attempt.push(format!("verdict = {}", string(v)));
    }
    if let Some(g) = &f.host {
        attempt.push(format!("host != '' AND lowerUTF8(host) LIKE {}", string(&like(g.chars()))));
    }
    if let Some(n) = &f.to_ip {
        attempt.push(cidr(n));
    }
    if let Some(p) = f.port {
        attempt.push(format!("dport = {p}"));
    }
    let attempts = attempt.join(" AND ");
    all.push(if lost_ok { format!("(kind = 'lost' OR ({attempts}))") } else { format!("({attempts})") });
    if all.is_empty() { "1".into() } else { all.join(" AND ") }
}

/// The statement: the matching records of `table` (`db.table`, checked
/// identifiers), oldest first; with `last`, only that many of the newest.
pub fn statement(table: &str, f: &Filter, last: Option<usize>) -> String {
    let cond = condition(f);
    match last {
        None => format!("SELECT {COLUMNS} FROM {table} WHERE {cond} ORDER BY time_ms, node, endpoint FORMAT JSONEachRow"),
        Some(n) => format!(
            "SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM {table} WHERE {cond} \
             ORDER BY time_ms DESC, node DESC, endpoint DESC LIMIT {n}) ORDER BY time_ms, node, endpoint FORMAT JSONEachRow"
        ),
    }
}

/// The answer's rows as records that pass `f` (checked again here), and
/// how many did not (the SQL and the filter disagree: said on stderr).
pub fn entries(answer: &str, f: &Filter) -> anyhow::Result<(Vec<Entry>, usize)> {
    let (mut out, mut rejected) = (Vec::new(), 0);
    for line in answer.lines().filter(|l| !l.trim().is_empty()) {
        let row: Row =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("an unexpected row from ClickHouse ({e}): {line}"))?;
        let e = row.into_entry();
        if f.matches(&e) {
            out.push(e);
        } else {
            rejected += 1;
        }
    }
    Ok((out, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocked::query::filter::{Glob, parse_net};

    #[test]
    fn no_filter_is_every_record() {
        assert_eq!(condition(&Filter::default()), "(kind = 'lost' OR (kind != 'lost'))");
    }

    #[test]
    fn every_filter_becomes_a_condition_of_quoted_literals() {
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        let f = Filter {
            namespace: Some("team-a".into()),
            since: Some(t("2026-11-23T09:00:00.000000001Z")),
            until: Some(t("2026-11-23T10:00:00.999999Z")),
            reasons: vec!["denied-range".into(), "denied-default".into()],
            verdict: Some("blocked".into()),
            host: Some(Glob::parse("*.Example_1.test").unwrap()),
            to_ip: Some(parse_net("203.0.113.0/24").unwrap()),
            port: Some(443),
            ..Filter::default()
        }
        .with_pod(Some("agent-"))
        .unwrap();
        let c = condition(&f);
        for want in [
            "namespace = 'team-a'",
            "startsWith(if(pod != '', pod, endpoint), 'agent-')",
            "if(last_ms != 0, last_ms, time_ms) >= 1795424400001",
            "if(first_ms != 0, first_ms, time_ms) <= 1795428000999",
            "reason IN ('denied-range', 'denied-default')",
            "(kind != 'lost' AND verdict = 'blocked' AND host != '' AND lowerUTF8(host) LIKE '%.example\\\\_1.test'",
            "position(dst, ':') = 0 AND dst_hex >= '00000000000000000000ffffcb007100' AND dst_hex <= '00000000000000000000ffffcb0071ff'",
            "dport = 443)",
        ] {
            assert!(c.contains(want), "{want}\nin {c}");
        }
        assert!(!c.contains("kind = 'lost'"), "a destination filter excludes lost records: {c}");
        let v6 = condition(&Filter { to_ip: Some(parse_net("2001:db8::/32").unwrap()), ..Filter::default() });
        assert!(v6.contains("position(dst, ':') > 0 AND dst_hex >= '20010db8000000000000000000000000' AND dst_hex <= '20010db8ffffffffffffffffffffffff'"), "{v6}");
        assert!(condition(&Filter { namespace: Some(String::new()), ..Filter::default() }).starts_with("0 AND"));
        let audit = condition(&Filter { verdict: Some("audit".into()), ..Filter::default() });
        assert!(!audit.contains("kind = 'lost'"), "{audit}");
    }

    #[test]
    fn hostile_input_stays_inside_its_literal() {
        let f =
            Filter { namespace: Some("x' OR 1=1 --".into()), host: Some(Glob::parse("a'\\%_*").unwrap()), ..Filter::default() }
                .with_pod(Some("p\\'); DROP TABLE t; --"))
                .unwrap();
        let c = condition(&f);
        assert!(c.contains(r"namespace = 'x\' OR 1=1 --'"), "{c}");
        assert!(c.contains(r"startsWith(if(pod != '', pod, endpoint), 'p\\\'); DROP TABLE t; --')"), "{c}");
        assert!(c.contains(r"LIKE 'a\'\\\\\\%\\_%'"), "{c}");
    }

    #[test]
    fn the_last_n_are_the_newest_n_oldest_first() {
        let s = statement("portcullis.blocked", &Filter::default(), Some(20));
        assert!(s.contains("ORDER BY time_ms DESC, node DESC, endpoint DESC LIMIT 20) ORDER BY time_ms, node, endpoint"), "{s}");
        assert!(s.starts_with("SELECT time_ms, node,") && s.ends_with("FORMAT JSONEachRow"), "{s}");
        assert!(!statement("portcullis.blocked", &Filter::default(), None).contains("LIMIT"));
    }
}
