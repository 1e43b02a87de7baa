//! The answer, from the state and the live maps: every verdict comes from
//! `agent_common::decide` over the maps the kernel reads.

use std::net::IpAddr;

use agent_common::{Dest, Reason, decide, flow::range, proto};

use super::{AddressVerdict, ExplainError, Explanation, NameDecision, Request, render};
use crate::{
    enforcer::{Endpoint, State},
    policy::{canonical, range_name},
};

fn find<'a>(st: &'a State, req: &Request) -> Result<&'a Endpoint, ExplainError> {
    let want = |e: &&Endpoint| match (&req.endpoint, &req.pod) {
        (Some(name), _) => e.identity.name == *name,
        (None, Some(pod)) => {
            e.identity.pod.as_deref() == Some(pod.as_str())
                && req.namespace.as_deref().is_none_or(|ns| e.identity.namespace.as_deref() == Some(ns))
        }
        (None, None) => false,
    };
    if req.endpoint.is_none() && req.pod.is_none() {
        // `exec` (one endpoint): no need to name it.
        let mut all = st.endpoints();
        return match (all.next(), all.next()) {
            (Some(only), None) => Ok(only),
            _ => Err(ExplainError::NoTarget),
        };
    }
    st.endpoints().find(want).ok_or_else(|| {
        let who = match (&req.endpoint, &req.namespace, &req.pod) {
            (Some(n), _, _) => n.clone(),
            (None, Some(ns), Some(p)) => format!("{ns}/{p}"),
            (None, None, Some(p)) => p.clone(),
            _ => String::new(),
        };
        ExplainError::NoEndpoint(who)
    })
}

/// The kernel's verdict on one address, now.
fn address(st: &State, ep: &Endpoint, ip: IpAddr, port: u16, proto: u8) -> AddressVerdict {
    let d = Dest { proto, port: port.to_be_bytes(), ip: canonical(ip).octets() };
    // A pod's sockets live in its own network namespace: its loopback is
    // its own (the socket hooks' view).
    let v = decide(&st.maps, ep.id, &d, || false);
    let expires_in_s = (v.reason == Reason::AllowedFqdn && v.lasts_ns != u64::MAX).then_some(v.lasts_ns / 1_000_000_000);
    AddressVerdict {
        ip,
        reason: v.reason.as_str().to_owned(),
        allowed: v.reason.is_allowed(),
        rule: ep.policy.rule_text(v.rule).map(str::to_owned),
        range: (v.reason == Reason::DeniedRange)
            .then(|| if v.range != 0 { Some(range::name(v.range).to_owned()) } else { range_name(ip).map(str::to_owned) })
            .flatten(),
        expires_in_s,
        name: ep.name_for(ip).map(str::to_owned),
    }
}

/// "47" or "ip-proto-47" (the blocked log's name for it).
fn other_protocol(s: &str) -> Option<u8> {
    s.strip_prefix("ip-proto-").unwrap_or(s).parse().ok()
}

pub fn evaluate(st: &State, req: &Request) -> Result<Explanation, ExplainError> {
    let ep = find(st, req)?;
    let host = req.host.trim_end_matches('.').to_ascii_lowercase();
    let v6 = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6() && canonical(ip).to_ipv4_mapped().is_none());
    let proto = match req.protocol.as_str() {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        // ICMP has no ports: the kernel keys it with port 0.
        "icmp" if v6 => proto::ICMPV6,
        "icmp" => proto::ICMP,
        "icmpv6" => proto::ICMPV6,
        other => other_protocol(other).ok_or_else(|| ExplainError::Protocol(other.to_owned()))?,
    };
    let req = &Request { port: if proto::has_ports(proto) { req.port } else { 0 }, ..req.clone() };
    let mut out = Explanation {
        endpoint: ep.identity.name.clone(),
        namespace: ep.identity.namespace.clone(),
        pod: ep.identity.pod.clone(),
        host: host.clone(),
        port: req.port,
        protocol: req.protocol.clone(),
        verdict: String::new(),
        dns: None,
        addresses: Vec::new(),
        why: String::new(),
        change: None,
        why_no_change: None,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        out.addresses.push(address(st, ep, ip, req.port, proto));
    } else {
        if host.is_empty()
            || host.len() > 253
            || host.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
        {
            return Err(ExplainError::Host(req.host.clone()));
        }
        let rule = ep.policy.rule_for(&host, proto, req.port);
        out.dns = Some(NameDecision {
            resolvable: ep.policy.may_resolve(&host),
            allowed_here: rule != 0,
            rule: ep.policy.rule_text(rule).map(str::to_owned),
        });
        out.addresses = st.learned_ips(ep.id, &host).into_iter().map(|ip| address(st, ep, ip, req.port, proto)).collect();
        if out.addresses.is_empty() {
            // Nothing learned: the addresses its answers held, if every one
            // is always denied (stripped: the name does not resolve here).
            let seen = ep.seen_addresses(&host);
            if !seen.is_empty() && seen.iter().all(|ip| ep.unreachable(*ip)) {
                out.addresses = seen.into_iter().map(|ip| address(st, ep, ip, req.port, proto)).collect();
            }
        }
    }
    render::conclude(&mut out, ep);
    Ok(out)
}
