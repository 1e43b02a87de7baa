//! The verdict in words, the smallest policy change, and the text a person
//! reads at 3 a.m.

use std::fmt::Write as _;

use super::{AddressVerdict, Explanation};
use crate::enforcer::Endpoint;

const NEVER_OPENED: &str = "always-denied ranges (cloud metadata, private, link-local, loopback...) are never suggested: \
only an explicit toCIDRs entry for exactly this address could open it; read docs/THREAT-MODEL.md before writing one";

fn ports_yaml(port: u16, protocol: &str) -> String {
    format!("    ports: [{{port: {port}, protocol: {}}}]", protocol.to_ascii_uppercase())
}

fn fqdn_change(name: &str, port: u16, protocol: &str) -> String {
    format!("egress:\n  - toFQDNs: [{{matchName: {name}}}]\n{}\n", ports_yaml(port, protocol))
}

fn cidr_change(a: &AddressVerdict, port: u16, protocol: &str) -> String {
    let bits = if a.ip.is_ipv4() { 32 } else { 128 };
    format!("egress:\n  - toCIDRs: [\"{}/{bits}\"]\n{}\n", a.ip, ports_yaml(port, protocol))
}

/// Why one address is allowed or blocked.
fn address_why(a: &AddressVerdict) -> String {
    let rule = a.rule.as_deref().map(|r| format!(" by {r}")).unwrap_or_default();
    match a.reason.as_str() {
        "allowed-fqdn" => format!(
            "learned from this pod's DNS answer{}{rule}, for {} more s",
            a.name.as_deref().map(|n| format!(" for {n}")).unwrap_or_default(),
            a.expires_in_s.unwrap_or(0)
        ),
        "allowed-cidr" => format!("a toCIDRs entry allows it{rule}"),
        "allowed-dns" => "a trusted resolver of the pod (its queries go through the DNS gate)".to_owned(),
        "allowed-loopback" => "the pod's own loopback".to_owned(),
        "denied-range" => format!("in an always-denied range ({})", a.range.as_deref().unwrap_or("reserved")),
        "denied-dns-server" => "DNS (port 53) goes only to the pod's trusted resolvers".to_owned(),
        "denied-default" => "no rule allows it (default deny)".to_owned(),
        other => other.to_owned(),
    }
}

/// Sets the verdict, the reason in one sentence and the change. An
/// endpoint in audit mode lets through what its policy blocks (and logs it
/// with verdict `audit`): so does its explanation.
pub fn conclude(out: &mut Explanation, ep: &Endpoint) {
    decide_verdict(out);
    if ep.mode.audits() && out.verdict == "blocked" {
        out.verdict = "audit".to_owned();
        out.why = format!("audit mode lets it through (and logs it); enforcing, it would be {}", out.why);
    }
}

fn decide_verdict(out: &mut Explanation) {
    let (port, proto) = (out.port, out.protocol.clone());
    match out.dns.clone() {
        None => {
            let a = out.addresses[0].clone();
            out.verdict = if a.allowed { "allowed" } else { "blocked" }.to_owned();
            out.why = format!("{} {}: {}", out.verdict, a.ip, address_why(&a));
            if a.allowed {
                return;
            }
            match a.reason.as_str() {
                "denied-range" => out.why_no_change = Some(NEVER_OPENED.to_owned()),
                "denied-dns-server" => {
                    out.change = Some(format!("dns:\n  servers: [\"{}\"]   # only a resolver you trust\n", a.ip));
                }
                "denied-default" => {
                    // A name is better than an address: it follows the service.
                    out.change = Some(match &a.name {
                        Some(n) => fqdn_change(n, port, &proto),
                        None => cidr_change(&a, port, &proto),
                    });
                }
                other => out.why_no_change = Some(format!("{other} is not decided by the policy")),
            }
        }
        Some(d) => {
            let any_allowed = out.addresses.iter().any(|a| a.allowed);
            let rule = d.rule.as_deref().unwrap_or("?");
            if d.allowed_here && any_allowed {
                out.verdict = "allowed".to_owned();
                out.why =
                    format!("allowed: {} resolves through the pod's DNS gate and {rule} allows it on {port}/{proto}", out.host);
            } else if d.allowed_here && !out.addresses.is_empty() {
                out.verdict = "blocked".to_owned();
                out.why = format!(
                    "blocked: {rule} allows {} on {port}/{proto}, but its answers held only always-denied addresses, \
                     which the DNS gate strips (DNS rebinding): the name does not resolve for this pod",
                    out.host
                );
                out.why_no_change = Some(NEVER_OPENED.to_owned());
            } else if d.allowed_here {
                out.verdict = "allowed-after-lookup".to_owned();
                out.why = format!(
                    "{rule} allows {} on {port}/{proto}; no address of it is learned for this pod now (not resolved yet, or expired): \
                     its next lookup opens them",
                    out.host
                );
            } else {
                out.verdict = "blocked".to_owned();
                out.why = if d.resolvable {
                    format!("blocked: {} may be resolved, but no rule allows it on {port}/{proto}", out.host)
                } else {
                    format!(
                        "blocked: no rule allows {}; its DNS queries are refused (NXDOMAIN) and never leave the node",
                        out.host
                    )
                };
                out.change = Some(fqdn_change(&out.host, port, &proto));
            }
        }
    }
}

/// The human answer.
pub fn text(e: &Explanation) -> String {
    let mut s = String::new();
    let who = match (&e.namespace, &e.pod) {
        (Some(ns), Some(p)) => format!("{ns}/{p}"),
        _ => e.endpoint.clone(),
    };
    let _ = writeln!(s, "{} -> {}:{} ({})", escape_for_terminal(&who), escape_for_terminal(&e.host), e.port, e.protocol);
    let _ = writeln!(s, "verdict: {}", e.verdict.to_uppercase());
    let _ = writeln!(s, "why:     {}", escape_for_terminal(&e.why));
    if let Some(d) = &e.dns {
        let _ = writeln!(
            s,
            "dns:     {}{}",
            if d.resolvable { "answered" } else { "refused (NXDOMAIN)" },
            d.rule.as_deref().map(|r| format!(", rule: {}", escape_for_terminal(r))).unwrap_or_default()
        );
    }
    for a in &e.addresses {
        let _ = writeln!(
            s,
            "  {:<40} {:<8} {}",
            a.ip,
            if a.allowed { "allowed" } else { "blocked" },
            escape_for_terminal(&address_why(a))
        );
    }
    if let Some(c) = &e.change {
        let _ = writeln!(s, "\nsmallest change that would allow it (review before applying):\n{}", escape_keeping_lines(c));
    }
    if let Some(w) = &e.why_no_change {
        let _ = writeln!(s, "\nno change suggested: {w}");
    }
    s
}

/// Control characters (a name could carry an ANSI escape or a newline that
/// forges a line) shown as `\u{..}`.
fn escape_for_terminal(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

fn escape_keeping_lines(s: &str) -> String {
    s.split('\n').map(escape_for_terminal).collect::<Vec<_>>().join("\n")
}
