//! `portcullis suggest`: the policy lines the blocked records of a pod
//! imply, printed as the `egress:` list of an EgressPolicy `spec` (or a
//! `run` config's `policy:`), each with a comment saying why, for a person
//! to review. Nothing is applied.
//!
//! - A name blocked by default (`denied-default` with the host the pod
//!   resolved) or refused at lookup (`denied-dns-name`): a `toFQDNs`
//!   `matchName` entry for exactly that name (never widened to a
//!   `*.domain` pattern: that is a person's call), on the ports tried.
//! - An address with no name seen: a `/32` (`/128`) `toCIDRs` entry with a
//!   warning: prefer the name, if it has one.
//! - Never anything for always-denied ranges (cloud metadata, private,
//!   link-local, loopback, ...), DNS servers, source routes, forged
//!   sources or internal failures: those are listed in comments that say
//!   why none is suggested.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
};

use super::query::{SuggestArgs, entry::Entry, filter::Filter, matching, print::plural, print::short_time};
use crate::policy::range_name;

/// (protocol, port) tried; port 0 for ICMP and other portless protocols.
type PortKey = (String, u16);

#[derive(Default)]
struct Seen {
    ports: BTreeSet<PortKey>,
    attempts: u64,
    lookups: u64,
    first: String,
    last: String,
}

impl Seen {
    fn add(&mut self, e: &Entry) {
        let first = e.first.clone().or_else(|| e.time.clone()).unwrap_or_default();
        let last = e.last.clone().or_else(|| e.time.clone()).unwrap_or_default();
        if self.first.is_empty() || first < self.first {
            self.first = first;
        }
        self.last = self.last.clone().max(last);
    }
}

/// A host name `matchName` takes (the CRD's pattern), lower-cased.
fn valid_name(h: &str) -> Option<String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !h.starts_with('.')
        && h.contains(|c: char| c.is_ascii_alphabetic());
    ok.then(|| h.trim_end_matches('.').to_ascii_lowercase())
}

/// Why a record is never turned into a suggestion.
fn why_not(e: &Entry) -> Option<String> {
    let reason = e.reason.as_deref().unwrap_or("unknown");
    let range = e.range.clone().or_else(|| e.dst.and_then(range_name).map(str::to_owned));
    Some(match reason {
        "denied-range" if e.protocol.as_deref() == Some("dns") => {
            "an always-denied address in a DNS answer (rebinding): stripped, never suggested".into()
        }
        "denied-range" => format!(
            "always-denied range ({}): cloud metadata, private, link-local and loopback addresses stay closed; \
             only an explicit toCIDRs rule for that address, written by a person, opens one",
            range.as_deref().unwrap_or("?")
        ),
        "denied-dns-server" => "DNS to a server the policy does not trust (a way around the DNS gate); \
            trusted resolvers are dns.servers, not egress rules"
            .into(),
        "denied-dns-no-gate" => {
            "DNS over TCP before the agent had a gate in the pod's namespace: retried, not a policy matter".into()
        }
        "denied-source-route" => "a source-routed packet: never allowed".into(),
        "denied-spoofed" => "a packet with a forged source address: never allowed".into(),
        "denied-malformed" => "a packet that could not be parsed: never allowed".into(),
        "denied-internal" | "dns-hold-failed" => "the agent failed closed (see its log and counters): not a policy matter".into(),
        "denied-default" | "denied-dns-name" => match (&range, &e.host) {
            (Some(r), _) => format!("an address in an always-denied range ({r}): never suggested"),
            (None, Some(h)) if valid_name(h).is_none() => "not a valid host name for matchName: never suggested".into(),
            _ => return None,
        },
        other => format!("{other}: not a policy matter"),
    })
}

fn label(e: &Entry) -> String {
    let mut s = super::query::print::destination(e);
    if let Some(h) = &e.host
        && e.protocol.as_deref() != Some("dns")
    {
        s = format!("{} ({h})", s.replacen(&format!("{h} "), "", 1));
    }
    s
}

fn ports_yaml(out: &mut impl Write, ports: &BTreeSet<PortKey>) -> std::io::Result<()> {
    let with_port: Vec<&PortKey> = ports.iter().filter(|(_, p)| *p != 0).collect();
    if with_port.is_empty() {
        return Ok(());
    }
    writeln!(out, "    ports:")?;
    for (proto, port) in with_port {
        match proto.as_str() {
            "udp" => writeln!(out, "      - {{port: {port}, protocol: UDP}}")?,
            "sctp" => writeln!(out, "      - {{port: {port}, protocol: SCTP}}")?,
            _ => writeln!(out, "      - {{port: {port}}}")?,
        }
    }
    Ok(())
}

fn when(s: &Seen) -> String {
    let (f, l) = (short_time(&s.first), short_time(&s.last));
    if f == l { format!("at {f}") } else { format!("{f} to {l}") }
}

/// Writes the suggestion for `entries` (one pod's, already filtered).
pub fn suggest(out: &mut impl Write, entries: &[Entry], what: &str) -> std::io::Result<()> {
    let mut names: BTreeMap<String, Seen> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, Seen> = BTreeMap::new();
    let mut refused: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut pods = BTreeSet::new();
    let mut attempts = 0;
    for e in entries.iter().filter(|e| !e.is_lost()) {
        pods.insert(e.who());
        attempts += e.count();
        if let Some(why) = why_not(e) {
            let r = refused.entry((label(e), e.reason.clone().unwrap_or_default())).or_insert((0, why));
            r.0 += e.count();
            continue;
        }
        let port = (e.protocol.clone().unwrap_or_default(), e.dport.unwrap_or(0));
        match (e.reason.as_deref(), e.host.as_deref().and_then(valid_name), e.dst) {
            (Some("denied-dns-name"), Some(h), _) => {
                let s = names.entry(h).or_default();
                s.lookups += e.count();
                s.add(e);
            }
            (_, Some(h), _) => {
                let s = names.entry(h).or_default();
                s.ports.insert(port);
                s.attempts += e.count();
                s.add(e);
            }
            (_, None, Some(ip)) => {
                let s = addrs.entry(ip).or_default();
                s.ports.insert(port);
                s.attempts += e.count();
                s.add(e);
            }
            _ => {}
        }
    }
    writeln!(out, "# portcullis suggest: policy lines implied by {} of {what}.", plural(attempts, "blocked attempt"))?;
    if pods.len() > 1 {
        writeln!(out, "# Pods: {}.", pods.into_iter().collect::<Vec<_>>().join(", "))?;
    }
    writeln!(out, "# Review each before adding it to the EgressPolicy's spec.egress (or the run config's policy.egress):")?;
    writeln!(out, "# nothing is applied. Names are exact; widen one to a *. pattern only if you mean every subdomain.")?;
    if names.is_empty() && addrs.is_empty() {
        writeln!(out, "# Nothing to suggest.")?;
        writeln!(out, "egress: []")?;
    } else {
        writeln!(out, "egress:")?;
    }
    for (name, s) in &names {
        let mut why = Vec::new();
        if s.attempts > 0 {
            why.push(format!("{} blocked (no rule allows it)", plural(s.attempts, "connection attempt")));
        }
        if s.lookups > 0 {
            why.push(format!("{} refused (the name is not allowed)", plural(s.lookups, "DNS lookup")));
        }
        writeln!(out, "  # {name}: {}, {}.", why.join(", "), when(s))?;
        if s.ports.iter().all(|(_, p)| *p == 0) {
            writeln!(out, "  # No port is known (a refused lookup comes before any connection): without `ports` the rule")?;
            writeln!(out, "  # allows every port and protocol; add the ones it needs.")?;
        } else if s.ports.iter().any(|(_, p)| *p == 0) {
            writeln!(out, "  # ICMP was tried too: only a rule without `ports` allows it (and every port).")?;
        }
        writeln!(out, "  - toFQDNs:\n      - matchName: {name}")?;
        ports_yaml(out, &s.ports)?;
    }
    for (ip, s) in &addrs {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        writeln!(
            out,
            "  # WARNING {ip}: {} to a bare address, no DNS name seen for it, {}.",
            plural(s.attempts, "attempt"),
            when(s)
        )?;
        writeln!(out, "  # An address can change hands; prefer the name the workload should use, if it has one.")?;
        writeln!(out, "  - toCIDRs:\n      - {ip}/{bits}")?;
        ports_yaml(out, &s.ports)?;
    }
    if !refused.is_empty() {
        writeln!(out, "# Not suggested (no policy line should allow these):")?;
        for ((what, reason), (n, why)) in &refused {
            writeln!(out, "# - {what}: {}, {reason}: {why}.", plural(*n, "attempt"))?;
        }
    }
    Ok(())
}

/// Runs `portcullis suggest`; the exit status.
pub fn run(a: &SuggestArgs) -> i32 {
    let go = || -> anyhow::Result<()> {
        let filter = Filter { namespace: a.namespace.clone(), since: Some(a.since), until: a.until, ..Filter::default() }
            .with_pod(a.pod.as_deref())
            .map_err(anyhow::Error::msg)?;
        let entries = matching(&a.source, &filter)?;
        let what = match (&filter.namespace, &filter.pod) {
            (Some(ns), Some(p)) => format!("pod {ns}/{p}"),
            (Some(ns), None) => format!("namespace {ns}"),
            (None, Some(p)) => format!("pod {p}"),
            (None, None) => "every pod".into(),
        };
        let since = crate::blocked::schema::rfc3339(a.since);
        suggest(&mut std::io::stdout().lock(), &entries, &format!("{what} since {}", short_time(&since)))?;
        Ok(())
    };
    match go() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portcullis suggest: {e:#}");
            1
        }
    }
}

#[cfg(test)]
#[path = "suggest_tests.rs"]
mod tests;
