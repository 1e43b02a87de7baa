//! The policy decision of every hook: (endpoint, protocol, destination IP,
//! destination port) -> `Verdict`. One copy, run by the kernel programs
//! over their maps (`agent-ebpf/src/verdict.rs`) and by `portcullis explain`
//! over the same maps read from user space (`agent/src/explain/`), so an
//! explanation can never disagree with the datapath. Order matters and is
//! documented in docs/ARCHITECTURE.md ("Verdict order").

use crate::{
    CIDR_KIND_ALLOW, CIDR_KIND_DENY_RANGE, CIDR_KIND_LOOPBACK, CIDR_MAX_PORTS, CidrValue, DnsServerKey, LearnedKey, Reason, proto,
};

/// What is decided about.
pub struct Dest {
    pub proto: u8,
    /// Network byte order.
    pub port: [u8; 2],
    /// IPv6 or IPv4-mapped.
    pub ip: [u8; 16],
}

/// The maps a decision reads. The kernel's implementation looks them up
/// in place; user space reads the pinned maps.
pub trait PolicyMaps {
    /// CLOCK_BOOTTIME nanoseconds (learned entries expire against it).
    fn now_ns(&self) -> u64;
    fn trusted_resolver(&self, key: &DnsServerKey) -> bool;
    /// The learned entry's (expiry, rule id), if any.
    fn learned(&self, key: &LearnedKey) -> Option<(u64, u32)>;
    /// Calls `f` with the longest-prefix `CIDRS` entry of (endpoint, ip):
    /// by reference, so the kernel copies no 80-byte value onto its stack.
    fn with_cidr<R>(&self, endpoint: u32, ip: &[u8; 16], f: impl FnOnce(Option<&CidrValue>) -> R) -> R;
}

/// A verdict, and what it came from:
/// - `lasts_ns`: for an allowance that does not depend on the socket's
///   network namespace (learned IPs, CIDR rules), how long it lasts in ns
///   (`u64::MAX`: until the policy changes); else 0. The socket hooks cache
///   such allowances;
/// - `rule`: the policy entry that allowed it (`LearnedValue::rule`,
///   `PortRange::rule`), 0 if none;
/// - `range`: the always-denied range that denied it (`CidrValue::range`),
///   0 if none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    pub rule: u32,
    pub range: u32,
    pub lasts_ns: u64,
}

impl Verdict {
    #[inline(always)]
    pub const fn of(reason: Reason) -> Self {
        Self { reason, rule: 0, range: 0, lasts_ns: 0 }
    }
}

const DNS_PORT_BE: [u8; 2] = 53u16.to_be_bytes();

#[inline(always)]
pub fn is_trusted_resolver(m: &impl PolicyMaps, endpoint: u32, d: &Dest) -> bool {
    m.trusted_resolver(&DnsServerKey { endpoint, port: d.port, _pad: [0; 2], ip: d.ip })
}

/// How long the learned allowance for `d` still lasts (ns) and its rule.
#[inline(always)]
fn learned(m: &impl PolicyMaps, endpoint: u32, d: &Dest) -> Option<(u64, u32)> {
    let now = m.now_ns();
    let mut key = LearnedKey { endpoint, proto: d.proto, _pad: 0, port: d.port, ip: d.ip };
    if let Some((expires, rule)) = m.learned(&key)
        && expires > now
    {
        return Some((expires - now, rule));
    }
    key.proto = proto::ANY;
    key.port = [0, 0];
    let (expires, rule) = m.learned(&key)?;
    (expires > now).then(|| (expires - now, rule))
}

/// `host_netns`: whether the socket lives in the host's network namespace
/// (then loopback reaches host services and is denied); asked only for
/// loopback destinations, so the helper call stays off the common path.
#[inline(always)]
pub fn decide(m: &impl PolicyMaps, endpoint: u32, d: &Dest, host_netns: impl FnOnce() -> bool) -> Verdict {
    let l4_dns = d.proto == proto::TCP || d.proto == proto::UDP;
    // DNS only to trusted resolvers: port 53 anywhere else is refused even if
    // a rule would allow the IP, so the resolver is the only DNS path.
    if l4_dns && d.port == DNS_PORT_BE {
        return Verdict::of(if is_trusted_resolver(m, endpoint, d) { Reason::AllowedDns } else { Reason::DeniedDnsServer });
    }
    // The agent never learns an always-denied address, so a hit here cannot
    // open a denied range (checked in user space before every insert).
    if let Some((lasts_ns, rule)) = learned(m, endpoint, d) {
        return Verdict { reason: Reason::AllowedFqdn, rule, range: 0, lasts_ns };
    }
    // Resolvers on a non-standard port (tests, node-local caches).
    if l4_dns && is_trusted_resolver(m, endpoint, d) {
        return Verdict::of(Reason::AllowedDns);
    }
    m.with_cidr(endpoint, &d.ip, |v| {
        let Some(v) = v else {
            return Verdict::of(Reason::DeniedDefault);
        };
        let range = v.range;
        let denied_range = Verdict { reason: Reason::DeniedRange, rule: 0, range, lasts_ns: 0 };
        match v.kind {
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
                        return Verdict { reason: Reason::AllowedCidr, rule: u32::from(r.rule), range: 0, lasts_ns: u64::MAX };
                    }
                    i += 1;
                }
                if v.inside_deny_range != 0 { denied_range } else { Verdict::of(Reason::DeniedDefault) }
            }
            CIDR_KIND_LOOPBACK => {
                if host_netns() {
                    denied_range
                } else {
                    Verdict::of(Reason::AllowedLoopback)
                }
            }
            CIDR_KIND_DENY_RANGE => denied_range,
            _ => Verdict::of(Reason::DeniedInternal),
        }
    })
}
