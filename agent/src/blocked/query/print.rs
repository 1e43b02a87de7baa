//! Output of `portcullis blocked`: a table a person can read at 3 a.m.
//! (`table`), one line per record (`compact`, as `hubble observe` prints),
//! or the records themselves (`json`, one per line, for `jq`). Every
//! string was escaped when read (`Entry::parse`): nothing in a record can
//! move the cursor or colour the terminal.

use std::io::Write;

use clap::ValueEnum;

use super::entry::Entry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Compact,
    Json,
}

/// `2026-11-23T09:59:29.814Z` as `2026-11-23 09:59:29.814`.
pub fn short_time(t: &str) -> String {
    t.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The DESTINATION cell: what was tried, as a person would say it.
pub fn destination(e: &Entry) -> String {
    if e.is_lost() {
        return format!("({} not written: {})", plural(e.count(), "attempt"), e.what.as_deref().unwrap_or("lost"));
    }
    if e.protocol.as_deref() == Some("dns") {
        let host = e.host.as_deref().unwrap_or("?");
        let decision = e.decision.as_deref().unwrap_or("refused");
        return match (e.reason.as_deref(), e.dst) {
            (Some("denied-range"), Some(ip)) => format!("{host} -> {ip} (address in a DNS answer, {decision})"),
            _ => format!("{host} (DNS lookup, {decision})"),
        };
    }
    e.destination()
}

/// The REASON cell: with the always-denied range's name.
pub fn reason(e: &Entry) -> String {
    let r = e.reason.as_deref().unwrap_or("?");
    match &e.range {
        Some(range) => format!("{r} ({range})"),
        None => r.to_owned(),
    }
}

pub fn plural(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn verdict(e: &Entry) -> &str {
    if e.is_lost() { "lost" } else { e.verdict.as_deref().unwrap_or("?") }
}

const HEADER: [&str; 7] = ["TIME (UTC)", "POD", "VERDICT", "REASON", "DESTINATION", "COUNT", "COMM"];

/// Columns of the table: with `nodes` (records of many nodes, from
/// ClickHouse), a NODE column after the time.
fn header(nodes: bool) -> Vec<String> {
    let mut h: Vec<String> = HEADER.map(str::to_owned).to_vec();
    if nodes {
        h.insert(1, "NODE".into());
    }
    h
}

fn row(e: &Entry, nodes: bool) -> Vec<String> {
    let mut r = vec![
        short_time(e.time.as_deref().unwrap_or("")),
        e.who(),
        verdict(e).to_owned(),
        reason(e),
        destination(e),
        e.count().to_string(),
        e.comm.clone().unwrap_or_else(|| "-".into()),
    ];
    if nodes {
        r.insert(1, e.node.clone().unwrap_or_else(|| "-".into()));
    }
    r
}

/// Widths for `--follow`, which cannot look ahead.
const FOLLOW_WIDTHS: [usize; 7] = [23, 28, 7, 26, 48, 5, 15];

/// One line; COUNT (the last but one) is right-aligned, COMM (the last)
/// not padded.
fn write_row(out: &mut impl Write, cells: &[String], widths: &[usize]) -> std::io::Result<()> {
    let mut line = String::new();
    let n = cells.len();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i + 2 == n {
            line.push_str(&format!("{c:>w$}  "));
        } else if i + 1 == n {
            line.push_str(c);
        } else {
            line.push_str(&format!("{c:<w$}  "));
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// A whole table, widths from its rows.
pub fn table(out: &mut impl Write, entries: &[Entry]) -> std::io::Result<()> {
    table_of(out, entries, false)
}

/// A whole table of many nodes' records (a NODE column).
pub fn table_with_nodes(out: &mut impl Write, entries: &[Entry]) -> std::io::Result<()> {
    table_of(out, entries, true)
}

fn table_of(out: &mut impl Write, entries: &[Entry], nodes: bool) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = entries.iter().map(|e| row(e, nodes)).collect();
    let head = header(nodes);
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    write_row(out, &head, &widths)?;
    for r in &rows {
        write_row(out, r, &widths)?;
    }
    Ok(())
}

pub fn table_header_follow(out: &mut impl Write) -> std::io::Result<()> {
    write_row(out, &header(false), &FOLLOW_WIDTHS)
}

pub fn table_row_follow(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    write_row(out, &row(e, false), &FOLLOW_WIDTHS)
}

pub fn compact(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    compact_of(out, e, false)
}

/// `compact` with the node after the time, as `hubble observe
/// --print-node-name` prints it.
pub fn compact_with_node(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    compact_of(out, e, true)
}

fn compact_of(out: &mut impl Write, e: &Entry, node: bool) -> std::io::Result<()> {
    let comm = e.comm.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
    let count = if e.count() > 1 { format!(" x{}", e.count()) } else { String::new() };
    let node = if node { format!(" [{}]:", e.node.as_deref().unwrap_or("-")) } else { String::new() };
    writeln!(
        out,
        "{}{node} {}{comm} -> {} {} {}{count}",
        e.time.as_deref().unwrap_or(""),
        e.who(),
        destination(e),
        verdict(e).to_uppercase(),
        reason(e)
    )
}

pub fn json(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
    writeln!(out, "{line}")
}

pub fn one(out: &mut impl Write, format: Format, e: &Entry) -> std::io::Result<()> {
    match format {
        Format::Table => table_row_follow(out, e),
        Format::Compact => compact(out, e),
        Format::Json => json(out, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = r#"{"v":1,"kind":"attempt","time":"2026-11-23T09:59:29.814Z","node":"n","verdict":"blocked","reason":"denied-range","range":"metadata","endpoint":"team-a/agent-a-0","namespace":"team-a","pod":"agent-a-0","protocol":"tcp","dst":"169.254.169.254","dport":80,"host":"metadata.google.internal","comm":"curl","hook":"connect4","cgroup_id":1,"count":3}"#;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
        let mut v = Vec::new();
        f(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn the_table_reads_like_a_sentence() {
        let e = Entry::parse(REC).unwrap();
        let dns = Entry::parse(
            r#"{"v":1,"time":"2026-11-23T10:01:03.500Z","verdict":"blocked","reason":"denied-dns-name","decision":"nxdomain","endpoint":"e","namespace":"team-a","pod":"agent-a-0","protocol":"dns","dst":"198.51.100.53","dport":53,"host":"pastebin.com","hook":"dns-gate","cgroup_id":1}"#,
        )
        .unwrap();
        let t = text(|o| table(o, &[e.clone(), dns]));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("TIME (UTC)") && lines[0].contains("DESTINATION"), "{t}");
        assert!(lines[1].starts_with("2026-11-23 09:59:29.814  team-a/agent-a-0  blocked  denied-range (metadata)"), "{t}");
        assert!(lines[1].contains("metadata.google.internal 169.254.169.254:80/tcp") && lines[1].ends_with("3  curl"), "{t}");
        assert!(lines[2].contains("pastebin.com (DNS lookup, nxdomain)"), "{t}");
        // Columns line up.
        let col = lines[0].find("VERDICT").unwrap();
        assert_eq!(&lines[1][col..col + 7], "blocked");
        assert!(text(|o| compact(o, &e)).contains(
            "team-a/agent-a-0 (curl) -> metadata.google.internal 169.254.169.254:80/tcp BLOCKED denied-range (metadata) x3"
        ));
        let j: serde_json::Value = serde_json::from_str(&text(|o| json(o, &e))).unwrap();
        assert_eq!((j["count"].as_u64(), j["range"].as_str()), (Some(3), Some("metadata")));
    }

    #[test]
    fn records_of_many_nodes_have_a_node_column() {
        let a = Entry::parse(REC).unwrap();
        let b = Entry::parse(&REC.replace(r#""node":"n""#, r#""node":"node-b""#)).unwrap();
        let t = text(|o| table_with_nodes(o, &[a.clone(), b.clone()]));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIME (UTC)               NODE    POD"), "{t}");
        assert!(lines[1].starts_with("2026-11-23 09:59:29.814  n       team-a/agent-a-0"), "{t}");
        assert!(lines[2].contains("  node-b  team-a/agent-a-0  blocked") && lines[2].ends_with("3  curl"), "{t}");
        assert!(text(|o| compact_with_node(o, &b)).starts_with("2026-11-23T09:59:29.814Z [node-b]: team-a/agent-a-0 (curl) -> "));
    }

    #[test]
    fn a_name_cannot_break_the_table() {
        let nasty = REC
            .replace("metadata.google.internal", "x\\n2026-01-01 forged\\u001b[2J\\u009b31m")
            .replace("curl", "c\\r\\u202eurl");
        let e = Entry::parse(&nasty).unwrap();
        for out in [text(|o| table(o, std::slice::from_ref(&e))), text(|o| compact(o, &e)), text(|o| one(o, Format::Table, &e))] {
            assert!(!out.chars().any(|c| crate::blocked::escape::is_unsafe(c) && c != '\n'), "{out:?}");
            assert!(out.lines().all(|l| !l.starts_with("2026-01-01 forged")), "{out}");
        }
        // JSON keeps them escaped too (serde would otherwise print C1 and
        // bidi characters raw).
        let j = text(|o| json(o, &e));
        assert!(!j.contains('\u{9b}') && !j.contains('\u{202e}'), "{j}");
    }
}
