//! The policy decision shared by every hook: (endpoint, protocol, destination
//! IP, destination port) -> `Reason`. Order matters and is documented in
//! docs/ARCHITECTURE.md ("Verdict order").

use agent_common::{
    CIDR_KIND_ALLOW, CIDR_KIND_DENY_RANGE, CIDR_KIND_LOOPBACK, CIDR_MAX_PORTS, CidrKey, DnsServerKey, EndpointInfo, LearnedKey,
    Reason, proto,
};
use aya_ebpf::{helpers::generated::bpf_ktime_get_boot_ns, maps::lpm_trie::Key};

use crate::maps::{CIDRS, DNS_SERVERS, LEARNED};

pub struct Dest {
    pub proto: u8,
    /// Network byte order.
    pub port: [u8; 2],
    /// IPv6 or IPv4-mapped.
    pub ip: [u8; 16],
}

const DNS_PORT_BE: [u8; 2] = 53u16.to_be_bytes();

#[inline(always)]
pub fn is_trusted_resolver(ep: u32, d: &Dest) -> bool {
    let key = DnsServerKey { endpoint: ep, port: d.port, _pad: [0; 2], ip: d.ip };
    DNS_SERVERS.get_ptr(key).is_some()
}

/// How long the learned allowance for `d` still lasts (ns), if any.
#[inline(always)]
fn learned(ep: u32, d: &Dest) -> Option<u64> {
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut key = LearnedKey { endpoint: ep, proto: d.proto, _pad: 0, port: d.port, ip: d.ip };
    if let Some(v) = LEARNED.get_ptr(key) {
        // SAFETY: plain u64 read from a map value.
        let expires = unsafe { (*v).expires_ns };
        if expires > now {
            return Some(expires - now);
        }
    }
    key.proto = proto::ANY;
    key.port = [0, 0];
    let v = LEARNED.get_ptr(key)?;
    let expires = unsafe { (*v).expires_ns };
    (expires > now).then(|| expires - now)
}

/// A verdict and, for an allowance that does not depend on the socket's
/// network namespace (learned IPs, CIDR rules), how long it lasts in ns
/// (`u64::MAX`: until the policy changes); else 0. The socket hooks cache
/// such allowances (`cache::remember`).
pub struct Verdict {
    pub reason: Reason,
    pub lasts_ns: u64,
}

impl Verdict {
    #[inline(always)]
    const fn of(reason: Reason) -> Self {
        Self { reason, lasts_ns: 0 }
    }
}

/// `host_netns`: whether the socket lives in the host's network namespace
/// (then loopback reaches host services and is denied); asked only for
/// loopback destinations, so the helper call stays off the common path.
#[inline(always)]
pub fn decide(ep: &EndpointInfo, d: &Dest, host_netns: impl FnOnce() -> bool) -> Verdict {
    let l4_dns = d.proto == proto::TCP || d.proto == proto::UDP;
    // DNS only to trusted resolvers: port 53 anywhere else is refused even if
    // a rule would allow the IP, so the resolver is the only DNS path.
    if l4_dns && d.port == DNS_PORT_BE {
        return Verdict::of(if is_trusted_resolver(ep.endpoint, d) { Reason::AllowedDns } else { Reason::DeniedDnsServer });
    }
    // The agent never learns an always-denied address, so a hit here cannot
    // open a denied range (checked in user space before every insert).
    if let Some(lasts_ns) = learned(ep.endpoint, d) {
        return Verdict { reason: Reason::AllowedFqdn, lasts_ns };
    }
    // Resolvers on a non-standard port (tests, node-local caches).
    if l4_dns && is_trusted_resolver(ep.endpoint, d) {
        return Verdict::of(Reason::AllowedDns);
    }
    let key = Key::new(32 + 128, CidrKey { endpoint_be: ep.endpoint.to_be_bytes(), ip: d.ip });
    let Some(v) = CIDRS.get(&key) else {
        return Verdict::of(Reason::DeniedDefault);
    };
    let reason = match v.kind {
        CIDR_KIND_ALLOW => {
            let port = u16::from_be_bytes(d.port);
            let n = if (v.nports as usize) < CIDR_MAX_PORTS { v.nports as usize } else { CIDR_MAX_PORTS };
            let mut i = 0;
            while i < CIDR_MAX_PORTS {
                if i >= n {
                    break;
                }
                let r = &v.ports[i];
                if r.proto == proto::ANY || (r.proto == d.proto && r.port_lo <= port && port <= r.port_hi) {
                    return Verdict { reason: Reason::AllowedCidr, lasts_ns: u64::MAX };
                }
                i += 1;
            }
            if v.inside_deny_range != 0 { Reason::DeniedRange } else { Reason::DeniedDefault }
        }
        CIDR_KIND_LOOPBACK => {
            if host_netns() {
                Reason::DeniedRange
            } else {
                Reason::AllowedLoopback
            }
        }
        CIDR_KIND_DENY_RANGE => Reason::DeniedRange,
        _ => Reason::DeniedInternal,
    };
    Verdict::of(reason)
}
