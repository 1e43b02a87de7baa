//! The policy decision of every hook, `agent_common::decide`, run over the
//! kernel's maps: the same code `portcullis explain` runs over the pinned
//! maps from user space.

use agent_common::{CidrKey, CidrValue, DnsServerKey, EndpointInfo, LearnedKey, PolicyMaps};
pub use agent_common::{Dest, Verdict};
use aya_ebpf::{helpers::generated::bpf_ktime_get_boot_ns, maps::lpm_trie::Key};

use crate::maps::{CIDRS, DNS_SERVERS, LEARNED};

/// The maps, looked up in place.
struct Kernel;

impl PolicyMaps for Kernel {
    #[inline(always)]
    fn now_ns(&self) -> u64 {
        unsafe { bpf_ktime_get_boot_ns() }
    }

    #[inline(always)]
    fn trusted_resolver(&self, key: &DnsServerKey) -> bool {
        DNS_SERVERS.get_ptr(key).is_some()
    }

    #[inline(always)]
    fn learned(&self, key: &LearnedKey) -> Option<(u64, u32)> {
        let v = LEARNED.get_ptr(key)?;
        // SAFETY: plain reads from a map value.
        Some(unsafe { ((*v).expires_ns, (*v).rule) })
    }

    #[inline(always)]
    fn with_cidr<R>(&self, endpoint: u32, ip: &[u8; 16], f: impl FnOnce(Option<&CidrValue>) -> R) -> R {
        let key = Key::new(32 + 128, CidrKey { endpoint_be: endpoint.to_be_bytes(), ip: *ip });
        f(CIDRS.get(&key))
    }
}

#[inline(always)]
pub fn is_trusted_resolver(ep: u32, d: &Dest) -> bool {
    agent_common::decide::is_trusted_resolver(&Kernel, ep, d)
}

/// `host_netns`: whether the socket lives in the host's network namespace
/// (then loopback reaches host services and is denied); asked only for
/// loopback destinations, so the helper call stays off the common path.
#[inline(always)]
pub fn decide(ep: &EndpointInfo, d: &Dest, host_netns: impl FnOnce() -> bool) -> Verdict {
    agent_common::decide(&Kernel, ep.endpoint, d, host_netns)
}
