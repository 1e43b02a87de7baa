//! Source routing: an IPv4 packet whose loose or strict source route option
//! (RFC 791 LSRR/SSRR) or an IPv6 packet whose routing header (RFC 8200
//! 4.4, e.g. segment routing, RFC 8754) names the hops leaves with the
//! first hop as its IP destination, not the address the socket was allowed
//! to. Enforced endpoints may not source-route at all: `cgroup/setsockopt`
//! refuses the options, and `cgroup_skb/egress` drops such packets
//! (`Reason::DeniedSourceRoute`), whatever set them (`setsockopt`, a
//! `sendmsg` control message, a raw socket). Shared by both hooks, and
//! tested here in user space.

/// `IPOPT_LSRR`, `IPOPT_SSRR` (include/uapi/linux/ip.h): copied flag, class
/// 0, numbers 3 and 9.
pub const IPOPT_LSRR: u8 = 0x83;
pub const IPOPT_SSRR: u8 = 0x89;

/// Longest IPv4 options area: a 60-byte header less the fixed 20.
pub const MAX_IPV4_OPTIONS: usize = 40;

/// `SOL_IP` / `SOL_IPV6` and the option names that install IP options or
/// an IPv6 routing header on a socket (include/uapi/linux/in.h, in6.h).
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
pub const IP_OPTIONS: i32 = 4;
/// RFC 2292 sticky options as one cmsg buffer (may carry a routing header).
pub const IPV6_2292PKTOPTIONS: i32 = 6;
pub const IPV6_2292RTHDR: i32 = 5;
pub const IPV6_RTHDR: i32 = 57;
/// IPv6 routing header's next-header number.
pub const IPPROTO_ROUTING: u8 = 43;

/// Whether an IPv4 options area of `len` bytes may hold a source route:
/// any of its bytes is `IPOPT_LSRR` or `IPOPT_SSRR`, or cannot be read
/// (`byte(i)` reads byte `i`; `None` fails closed). A byte scan, not a walk
/// of the option list: it also refuses the rare record-route or timestamp
/// option whose data holds such a byte, and in exchange the kernel
/// programs verify in a handful of states on every kernel (a walk with a
/// data-dependent step multiplies the verifier's states per option).
#[inline(always)]
pub fn ipv4_options_may_route(len: usize, byte: impl Fn(usize) -> Option<u8>) -> bool {
    let mut i = 0;
    while i < MAX_IPV4_OPTIONS && i < len {
        match byte(i) {
            None | Some(IPOPT_LSRR | IPOPT_SSRR) => return true,
            Some(_) => {}
        }
        i += 1;
    }
    false
}

/// Whether a `setsockopt(level, optname)` with a value of `len` bytes
/// (`byte` reads them, as for `ipv4_options_may_route`) would make the socket
/// source-route (or may, for the RFC 2292 option buffer).
#[inline(always)]
pub fn setsockopt_source_routes(level: i32, optname: i32, len: usize, byte: impl Fn(usize) -> Option<u8>) -> bool {
    if len == 0 {
        // Clears the options.
        return false;
    }
    match (level, optname) {
        (SOL_IP, IP_OPTIONS) => ipv4_options_may_route(len, byte),
        (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(b: &[u8]) -> bool {
        ipv4_options_may_route(b.len(), |i| b.get(i).copied())
    }

    #[test]
    fn finds_loose_and_strict_routes_after_other_options() {
        for kind in [IPOPT_LSRR, IPOPT_SSRR] {
            assert!(routed(&[kind, 7, 4, 169, 254, 169, 254, 0]));
            // After a no-op and a timestamp option.
            assert!(routed(&[1, 0x44, 4, 5, 0, kind, 7, 4, 10, 0, 0, 1]));
        }
    }

    #[test]
    fn other_options_pass() {
        // Record route (7), a timestamp (0x44), router alert (0x94), no-ops.
        assert!(!routed(&[7, 7, 4, 10, 0, 0, 1, 1, 0x94, 4, 0, 0]));
        assert!(!routed(&[1, 1, 1, 1]));
        assert!(!routed(&[]));
    }

    #[test]
    fn only_the_area_counts_and_unreadable_bytes_fail_closed() {
        let b = [1, 1, 1, 1, IPOPT_LSRR, 3, 4, 0];
        assert!(!ipv4_options_may_route(4, |i| b.get(i).copied()));
        assert!(ipv4_options_may_route(8, |i| b.get(i).copied()));
        assert!(ipv4_options_may_route(4, |_| None));
    }

    #[test]
    fn a_route_in_the_last_bytes_is_found() {
        let mut b = [1u8; MAX_IPV4_OPTIONS];
        b[MAX_IPV4_OPTIONS - 3..].copy_from_slice(&[IPOPT_LSRR, 3, 4]);
        assert!(routed(&b));
    }

    #[test]
    fn setsockopt_names() {
        let b = [IPOPT_LSRR, 7, 4, 1, 2, 3, 4, 0];
        let byte = |i: usize| b.get(i).copied();
        assert!(setsockopt_source_routes(SOL_IP, IP_OPTIONS, b.len(), byte));
        assert!(!setsockopt_source_routes(SOL_IP, IP_OPTIONS, 0, byte));
        assert!(!setsockopt_source_routes(SOL_IP, 1, b.len(), byte));
        for name in [IPV6_RTHDR, IPV6_2292RTHDR, IPV6_2292PKTOPTIONS] {
            assert!(setsockopt_source_routes(SOL_IPV6, name, 8, byte));
        }
        assert!(!setsockopt_source_routes(SOL_IPV6, 26, 4, byte));
    }
}
