//! The kernel's decision (`agent_common::decide`) run over the live maps
//! from user space: what `portcullis explain` answers with, so it cannot
//! disagree with the datapath (one function, the same map contents).

use agent_common::{CidrValue, DnsServerKey, LearnedKey, decide::PolicyMaps as DecideMaps};

use super::maps::PolicyMaps;
use crate::util::boot_ns;

impl DecideMaps for PolicyMaps {
    fn now_ns(&self) -> u64 {
        boot_ns()
    }

    fn trusted_resolver(&self, key: &DnsServerKey) -> bool {
        self.is_dns_server(key)
    }

    fn learned(&self, key: &LearnedKey) -> Option<(u64, u32)> {
        self.learned_value(key).map(|v| (v.expires_ns, v.rule))
    }

    fn with_cidr<R>(&self, endpoint: u32, ip: &[u8; 16], f: impl FnOnce(Option<&CidrValue>) -> R) -> R {
        f(self.cidr_lookup(endpoint, *ip).as_ref())
    }
}
