//! A record as read back from a log file: every field optional, so lines
//! of the records before version 1 (no `v`, `node`, `count`) and `lost`
//! records read alike; strings escaped again on the way in, since a file
//! may come from anywhere (an older agent, a copy from another node).

use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::when::parse_record_time;
use crate::blocked::escape::escape_opt;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// "attempt" (also when absent: records before version 1) or "lost".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// `lost` records: why the records were not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

impl Entry {
    /// Parses one line; `None` for anything that is not a record (a torn
    /// last line after a crash, a stray line).
    pub fn parse(line: &str) -> Option<Self> {
        let mut e: Self = serde_json::from_str(line).ok()?;
        e.time.as_ref()?;
        e.escape_strings();
        Some(e)
    }

    /// Escapes every string (`Entry::parse` does; records read from
    /// elsewhere, such as ClickHouse, must too).
    pub fn escape_strings(&mut self) {
        let e = self;
        for s in [
            &mut e.kind,
            &mut e.time,
            &mut e.node,
            &mut e.verdict,
            &mut e.reason,
            &mut e.range,
            &mut e.decision,
            &mut e.endpoint,
            &mut e.namespace,
            &mut e.pod,
            &mut e.protocol,
            &mut e.host,
            &mut e.comm,
            &mut e.hook,
            &mut e.first,
            &mut e.last,
            &mut e.what,
        ] {
            escape_opt(s);
        }
    }

    pub fn is_lost(&self) -> bool {
        self.kind.as_deref() == Some("lost")
    }

    /// Attempts this record stands for.
    pub fn count(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// When the first and the last attempt it stands for were.
    pub fn span(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let t = self.time.as_deref().and_then(parse_record_time);
        let first = self.first.as_deref().and_then(parse_record_time).or(t);
        let last = self.last.as_deref().and_then(parse_record_time).or(t);
        (first, last)
    }

    /// `namespace/pod`, else the endpoint's name.
    pub fn who(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(p)) => format!("{ns}/{p}"),
            _ => self.endpoint.clone().unwrap_or_else(|| "-".into()),
        }
    }

    /// `host ip:port/proto` (or without the host); `-` for lost records.
    pub fn destination(&self) -> String {
        let Some(dst) = self.dst else { return "-".into() };
        let proto = self.protocol.as_deref().unwrap_or("?");
        let addr = match (dst, self.dport) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        match &self.host {
            Some(h) => format!("{h} {addr}/{proto}"),
            None => format!("{addr}/{proto}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_new_lost_and_torn_lines() {
        let old = r#"{"time":"2026-11-23T09:59:29.814Z","verdict":"blocked","reason":"denied-range","endpoint":"e","protocol":"tcp","dst":"169.254.169.254","dport":80,"hook":"connect4","cgroup_id":4}"#;
        let e = Entry::parse(old).unwrap();
        assert_eq!((e.count(), e.is_lost(), e.who()), (1, false, "e".to_owned()));
        assert_eq!(e.destination(), "169.254.169.254:80/tcp");
        let new = r#"{"v":1,"kind":"attempt","time":"2026-11-23T09:59:29.814Z","node":"n","verdict":"blocked","reason":"denied-default","endpoint":"ws/a","namespace":"ws","pod":"a","protocol":"tcp","dst":"2001:db8::1","dport":443,"host":"x.test","hook":"connect6","cgroup_id":4,"count":3,"first":"2026-11-23T09:59:29.814Z","last":"2026-11-23T10:00:00Z"}"#;
        let e = Entry::parse(new).unwrap();
        assert_eq!((e.count(), e.who(), e.destination()), (3, "ws/a".to_owned(), "x.test [2001:db8::1]:443/tcp".to_owned()));
        let (f, l) = e.span();
        assert!(f.unwrap() < l.unwrap());
        let lost = r#"{"v":1,"kind":"lost","time":"2026-11-23T10:00:00.000Z","node":"n","endpoint":"ws/a","namespace":"ws","pod":"a","reason":"denied-default","what":"rate-limited","count":7,"first":"a","last":"b"}"#;
        let e = Entry::parse(lost).unwrap();
        assert!(e.is_lost());
        assert_eq!((e.count(), e.destination()), (7, "-".to_owned()));
        assert_eq!(Entry::parse(&new[..40]), None, "a torn line");
        assert_eq!(Entry::parse("{}"), None);
        let nasty = new.replace("x.test", "x\\u001b[31m.test");
        assert_eq!(Entry::parse(&nasty).unwrap().host.as_deref(), Some("x\\u{1b}[31m.test"), "escaped when read, too");
    }
}
