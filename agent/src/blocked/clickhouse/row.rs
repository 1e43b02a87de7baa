//! A blocked-log record as a row of the ClickHouse `blocked` table
//! (deploy/clickhouse/schema.sql), and back. Every field of the record has
//! a column; an absent one is stored as `''` or `0` and read back as absent,
//! so `portcullis blocked --clickhouse -o json` prints the very records the
//! node's files hold. Times are milliseconds since the epoch (`time_ms`,
//! `first_ms`, `last_ms`; 0 when absent), as ClickHouse 18.16 has no
//! DateTime64; `time` (seconds) is for partitions, ordering and people.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::blocked::{
    query::{entry::Entry, when::parse_record_time},
    schema::rfc3339,
};

/// The columns, in the order `SELECT` names them.
pub const COLUMNS: &str = "time_ms, node, namespace, pod, endpoint, v, kind, verdict, reason, range, decision, \
     protocol, dst, dport, host, pid, comm, hook, cgroup_id, ifindex, count, first_ms, last_ms, what";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    /// Seconds since the epoch (a `DateTime` column); never read back.
    #[serde(skip_deserializing)]
    pub time: u64,
    pub time_ms: u64,
    pub node: String,
    pub namespace: String,
    pub pod: String,
    pub endpoint: String,
    pub v: u32,
    pub kind: String,
    pub verdict: String,
    pub reason: String,
    pub range: String,
    pub decision: String,
    pub protocol: String,
    pub dst: String,
    /// The destination as 32 hex digits (IPv4 as IPv4-mapped IPv6), so a
    /// CIDR is a range of strings on any ClickHouse version; never read
    /// back.
    #[serde(skip_deserializing)]
    pub dst_hex: String,
    pub dport: u16,
    pub host: String,
    pub pid: u32,
    pub comm: String,
    pub hook: String,
    pub cgroup_id: u64,
    pub ifindex: u32,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub what: String,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// 32 hex digits of an address, IPv4 as IPv4-mapped IPv6.
pub fn hex(ip: IpAddr) -> String {
    let v6 = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    format!("{:032x}", u128::from(v6))
}

fn text(s: Option<String>) -> String {
    s.unwrap_or_default()
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl Row {
    /// A record as a row; `None` if it has no readable time.
    pub fn from_entry(e: Entry) -> Option<Self> {
        let time = e.time.as_deref().and_then(parse_record_time)?;
        let opt_ms = |s: &Option<String>| s.as_deref().and_then(parse_record_time).map_or(0, ms);
        Some(Self {
            time: ms(time) / 1000,
            time_ms: ms(time),
            first_ms: opt_ms(&e.first),
            last_ms: opt_ms(&e.last),
            node: text(e.node),
            namespace: text(e.namespace),
            pod: text(e.pod),
            endpoint: text(e.endpoint),
            v: e.v.unwrap_or(0),
            kind: e.kind.unwrap_or_else(|| "attempt".into()),
            verdict: text(e.verdict),
            reason: text(e.reason),
            range: text(e.range),
            decision: text(e.decision),
            protocol: text(e.protocol),
            dst: e.dst.map(|d| d.to_string()).unwrap_or_default(),
            dst_hex: e.dst.map(hex).unwrap_or_default(),
            dport: e.dport.unwrap_or(0),
            host: text(e.host),
            pid: e.pid.unwrap_or(0),
            comm: text(e.comm),
            hook: text(e.hook),
            cgroup_id: e.cgroup_id.unwrap_or(0),
            ifindex: e.ifindex.unwrap_or(0),
            count: e.count.unwrap_or(1),
            what: text(e.what),
        })
    }

    /// A line of the blocked log as the row's JSON (the ClickHouse tap's
    /// conversion); `None` for a line that is no record.
    pub fn from_line(line: &str) -> Option<String> {
        serde_json::to_string(&Self::from_entry(Entry::parse(line)?)?).ok()
    }

    /// The record again, its strings escaped as if read from a file.
    pub fn into_entry(self) -> Entry {
        let lost = self.kind == "lost";
        let mut e = Entry {
            v: (self.v > 0).then_some(self.v),
            kind: some(self.kind),
            time: Some(time_of(self.time_ms)),
            node: some(self.node),
            verdict: some(self.verdict),
            reason: some(self.reason),
            range: some(self.range),
            decision: some(self.decision),
            endpoint: some(self.endpoint),
            namespace: some(self.namespace),
            pod: some(self.pod),
            protocol: some(self.protocol),
            dst: self.dst.parse().ok(),
            // A lost record has no destination and no cgroup; an attempt
            // always has both (a port may be 0).
            dport: (!lost).then_some(self.dport),
            host: some(self.host),
            pid: (self.pid > 0).then_some(self.pid),
            comm: some(self.comm),
            hook: some(self.hook),
            cgroup_id: (!lost).then_some(self.cgroup_id),
            ifindex: (self.ifindex > 0).then_some(self.ifindex),
            count: Some(self.count),
            first: (self.first_ms > 0).then(|| time_of(self.first_ms)),
            last: (self.last_ms > 0).then(|| time_of(self.last_ms)),
            what: some(self.what),
        };
        e.escape_strings();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTEMPT: &str = r#"{"v":1,"kind":"attempt","time":"2026-11-23T09:59:29.814Z","node":"node-a","verdict":"blocked","reason":"denied-range","range":"metadata","endpoint":"team-a/agent-a-0","namespace":"team-a","pod":"agent-a-0","protocol":"tcp","dst":"169.254.169.254","dport":80,"host":"metadata.google.internal","pid":18802,"comm":"curl","hook":"connect4","cgroup_id":44,"count":3,"first":"2026-11-23T09:59:29.814Z","last":"2026-11-23T09:59:31.020Z"}"#;
    const LOST: &str = r#"{"v":1,"kind":"lost","time":"2026-11-23T10:00:00.000Z","node":"node-a","endpoint":"team-a/agent-a-0","namespace":"team-a","pod":"agent-a-0","reason":"denied-default","what":"rate-limited","count":1234,"first":"2026-11-23T09:59:50.000Z","last":"2026-11-23T09:59:59.990Z"}"#;
    const DNS: &str = r#"{"v":1,"kind":"attempt","time":"2026-11-23T10:01:03.500Z","node":"n","verdict":"blocked","reason":"denied-dns-name","decision":"nxdomain","endpoint":"run-ep","protocol":"dns","dst":"2001:db8::53","dport":53,"host":"pastebin.com","hook":"dns-gate","cgroup_id":0,"count":1}"#;

    #[test]
    fn records_round_trip_through_a_row() {
        for line in [ATTEMPT, LOST, DNS] {
            let row: Row = serde_json::from_str(&Row::from_line(line).unwrap()).unwrap();
            let back = serde_json::to_value(row.into_entry()).unwrap();
            let want: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(back, want, "{line}");
        }
    }

    #[test]
    fn the_row_has_the_times_in_milliseconds_and_the_address_in_hex() {
        let row: serde_json::Value = serde_json::from_str(&Row::from_line(ATTEMPT).unwrap()).unwrap();
        assert_eq!(row["time_ms"], 1_795_427_969_814_u64);
        assert_eq!(row["time"], 1_795_427_969_u64);
        assert_eq!(row["last_ms"], 1_795_427_971_020_u64);
        assert_eq!(row["dst_hex"], "00000000000000000000ffffa9fea9fe");
        assert_eq!(hex("2001:db8::1".parse().unwrap()), "20010db8000000000000000000000001");
        assert!(Row::from_line("not json").is_none());
        assert!(Row::from_line(r#"{"kind":"attempt"}"#).is_none(), "no time");
    }

    #[test]
    fn strings_read_back_are_escaped_again() {
        let row = Row { kind: "attempt".into(), host: "x\u{1b}[2J".into(), time_ms: 1, ..Row::default() };
        assert_eq!(row.into_entry().host.as_deref(), Some("x\\u{1b}[2J"));
    }
}
