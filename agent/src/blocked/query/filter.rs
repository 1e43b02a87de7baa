//! The filters of `portcullis blocked`, as `hubble observe` spells them:
//! each given filter must match (and); a repeated `--reason` matches any
//! of its values (or).

use std::{net::IpAddr, time::SystemTime};

use ipnet::IpNet;

use super::entry::Entry;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    /// A pod name prefix (an exact name is a prefix of itself).
    pub pod: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub reasons: Vec<String>,
    pub verdict: Option<String>,
    pub host: Option<Glob>,
    pub to_ip: Option<IpNet>,
    pub port: Option<u16>,
}

impl Filter {
    /// `--pod` as given: `ns/pod` sets the namespace too (and must agree
    /// with `-n`, if given).
    pub fn with_pod(mut self, pod: Option<&str>) -> Result<Self, String> {
        let Some(p) = pod else { return Ok(self) };
        match p.split_once('/') {
            Some((ns, name)) => {
                if self.namespace.as_deref().is_some_and(|n| n != ns) {
                    return Err(format!(
                        "--pod {p} names namespace {ns:?}, but -n says {:?}",
                        self.namespace.unwrap_or_default()
                    ));
                }
                self.namespace = Some(ns.to_owned());
                self.pod = Some(name.to_owned());
            }
            None => self.pod = Some(p.to_owned()),
        }
        Ok(self)
    }

    /// Whether a filter on the destination is given (`lost` records have
    /// none, so they never match one).
    fn on_destination(&self) -> bool {
        self.host.is_some() || self.to_ip.is_some() || self.port.is_some()
    }

    pub fn matches(&self, e: &Entry) -> bool {
        if self.namespace.as_ref().is_some_and(|ns| e.namespace.as_ref() != Some(ns)) {
            return false;
        }
        if let Some(p) = &self.pod {
            // Records of `exec`/`run` endpoints without a pod: the endpoint name.
            let name = e.pod.as_ref().or(e.endpoint.as_ref());
            if !name.is_some_and(|n| n.starts_with(p.as_str())) {
                return false;
            }
        }
        let (first, last) = e.span();
        if self.since.is_some_and(|s| last.is_none_or(|l| l < s)) || self.until.is_some_and(|u| first.is_none_or(|f| f > u)) {
            return false;
        }
        if !self.reasons.is_empty() && !e.reason.as_ref().is_some_and(|r| self.reasons.contains(r)) {
            return false;
        }
        if e.is_lost() {
            return !self.on_destination() && self.verdict.as_deref().is_none_or(|v| v == "blocked");
        }
        if self.verdict.as_ref().is_some_and(|v| e.verdict.as_ref() != Some(v)) {
            return false;
        }
        if self.host.as_ref().is_some_and(|g| !e.host.as_deref().is_some_and(|h| g.matches(h))) {
            return false;
        }
        if self.to_ip.is_some_and(|n| !e.dst.is_some_and(|d| n.contains(&unmapped(d)))) {
            return false;
        }
        self.port.is_none_or(|p| e.dport == Some(p))
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `--to-ip`: an address or a network.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 203.0.113.0/24)"))
}

/// A shell-style pattern on host names: `*` any run of characters, `?` one
/// character; case-insensitive, as DNS names are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<char>);

impl Glob {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty --host pattern matches nothing".into());
        }
        Ok(Self(s.to_lowercase().chars().collect()))
    }

    /// The pattern, lower-cased (`*` and `?` its wildcards).
    pub fn chars(&self) -> &[char] {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.to_lowercase().chars().collect();
        let (p, n) = (&self.0, &name);
        // Iterative wildcard match with one backtrack point.
        let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
        while j < n.len() {
            if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
                i += 1;
                j += 1;
            } else if i < p.len() && p[i] == '*' {
                star = Some(i);
                mark = j;
                i += 1;
            } else if let Some(s) = star {
                i = s + 1;
                mark += 1;
                j = mark;
            } else {
                return false;
            }
        }
        p[i..].iter().all(|c| *c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str) -> Entry {
        Entry::parse(json).unwrap()
    }

    const A: &str = r#"{"v":1,"kind":"attempt","time":"2026-11-23T10:00:00.000Z","verdict":"blocked","reason":"denied-default","endpoint":"team-a/agent-a-0","namespace":"team-a","pod":"agent-a-0","protocol":"tcp","dst":"203.0.113.9","dport":443,"host":"api.example.test","hook":"connect4","cgroup_id":1,"count":1}"#;

    #[test]
    fn globs() {
        let g = Glob::parse("*.example.test").unwrap();
        assert!(g.matches("api.example.test") && g.matches("a.b.EXAMPLE.test"));
        assert!(!g.matches("example.test") && !g.matches("api.example.test.evil"));
        assert!(Glob::parse("api.*").unwrap().matches("api.x"));
        assert!(Glob::parse("a?i.*.test").unwrap().matches("api.example.test"));
        assert!(Glob::parse("*").unwrap().matches(""));
        assert!(Glob::parse("exact.test").unwrap().matches("exact.test"));
        assert!(!Glob::parse("exact.test").unwrap().matches("exact.testx"));
        assert!(Glob::parse("").is_err());
    }

    #[test]
    fn every_filter_narrows() {
        let e = entry(A);
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        let yes = |f: Filter| assert!(f.matches(&e), "{f:?}");
        let no = |f: Filter| assert!(!f.matches(&e), "{f:?}");
        yes(Filter::default());
        yes(Filter { namespace: Some("team-a".into()), ..Filter::default() });
        no(Filter { namespace: Some("team-b".into()), ..Filter::default() });
        yes(Filter::default().with_pod(Some("agent-a")).unwrap());
        yes(Filter::default().with_pod(Some("team-a/agent-a-0")).unwrap());
        no(Filter::default().with_pod(Some("team-b/agent-a-0")).unwrap());
        no(Filter::default().with_pod(Some("agent-b")).unwrap());
        assert!(Filter { namespace: Some("x".into()), ..Filter::default() }.with_pod(Some("y/p")).is_err());
        yes(Filter { since: Some(t("2026-11-23T09:00:00Z")), until: Some(t("2026-11-23T11:00:00Z")), ..Filter::default() });
        no(Filter { since: Some(t("2026-11-23T10:00:01Z")), ..Filter::default() });
        no(Filter { until: Some(t("2026-11-23T09:59:59Z")), ..Filter::default() });
        yes(Filter { reasons: vec!["denied-range".into(), "denied-default".into()], ..Filter::default() });
        no(Filter { reasons: vec!["denied-range".into()], ..Filter::default() });
        yes(Filter { verdict: Some("blocked".into()), ..Filter::default() });
        no(Filter { verdict: Some("audit".into()), ..Filter::default() });
        yes(Filter { host: Some(Glob::parse("*.example.test").unwrap()), ..Filter::default() });
        no(Filter { host: Some(Glob::parse("*.other.test").unwrap()), ..Filter::default() });
        yes(Filter { to_ip: Some(parse_net("203.0.113.0/24").unwrap()), ..Filter::default() });
        yes(Filter { to_ip: Some(parse_net("203.0.113.9").unwrap()), ..Filter::default() });
        no(Filter { to_ip: Some(parse_net("198.51.100.0/24").unwrap()), ..Filter::default() });
        yes(Filter { port: Some(443), ..Filter::default() });
        no(Filter { port: Some(80), ..Filter::default() });
        assert!(parse_net("not-an-ip").is_err());
    }

    #[test]
    fn a_folded_record_matches_a_time_range_it_overlaps() {
        let e = entry(&A.replace(r#""count":1"#, r#""count":5,"first":"2026-11-23T10:00:00Z","last":"2026-11-23T10:05:00Z""#));
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert!(Filter { since: Some(t("2026-11-23T10:04:00Z")), ..Filter::default() }.matches(&e));
        assert!(!Filter { since: Some(t("2026-11-23T10:06:00Z")), ..Filter::default() }.matches(&e));
    }

    #[test]
    fn lost_records_match_who_and_reason_but_no_destination() {
        let lost = entry(
            r#"{"v":1,"kind":"lost","time":"2026-11-23T10:00:00.000Z","endpoint":"team-a/agent-a-0","namespace":"team-a","pod":"agent-a-0","reason":"denied-default","what":"rate-limited","count":7,"first":"2026-11-23T09:59:50Z","last":"2026-11-23T10:00:00Z"}"#,
        );
        assert!(Filter::default().with_pod(Some("team-a/agent")).unwrap().matches(&lost));
        assert!(Filter { reasons: vec!["denied-default".into()], ..Filter::default() }.matches(&lost));
        assert!(!Filter { port: Some(443), ..Filter::default() }.matches(&lost));
        assert!(!Filter { verdict: Some("audit".into()), ..Filter::default() }.matches(&lost));
    }
}
