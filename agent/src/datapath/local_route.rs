//! The policy route that delivers marked packets to the node itself:
//! `ip rule add fwmark MARK/MARK lookup TABLE` and `ip route add local
//! 0.0.0.0/0 dev lo table TABLE` (and the IPv6 twins). DNS over TCP taken
//! off a pod's veth is assigned to the agent's transparent listener
//! (`bpf_sk_assign`) and marked; without a local route the node would
//! forward it instead (net/ipv4/ip_forward.c drops a forwarded packet that
//! carries a socket). Cilium's DNS proxy uses the same construction.
//! Everything runs in the calling thread's namespace (the node's).

use std::io;

use super::netlink::{Msg, Netlink};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const LOOPBACK_IFINDEX: u32 = 1;

/// The rule's and the table's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRoute {
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

impl LocalRoute {
    /// Adds the rules and routes (those already there are fine).
    pub fn add(&self) -> io::Result<()> {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.route(RTM_NEWROUTE, family)?;
            self.rule(RTM_NEWRULE, family)?;
        }
        Ok(())
    }

    /// Removes them (those already gone are fine).
    pub fn remove(&self) -> io::Result<()> {
        let mut first = Ok(());
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            first = first.and(self.rule(RTM_DELRULE, family)).and(self.route(RTM_DELROUTE, family));
        }
        first
    }

    fn rule(&self, kind: u16, family: u8) -> io::Result<()> {
        // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1,
        // res2, action, flags.
        let hdr = [family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
        let mut m = Msg::new(kind, flags(kind == RTM_NEWRULE), &hdr);
        m.attr(FRA_PRIORITY, &self.priority.to_ne_bytes());
        m.attr(FRA_FWMARK, &self.mark.to_ne_bytes());
        m.attr(FRA_FWMASK, &self.mark.to_ne_bytes());
        m.attr(FRA_TABLE, &self.table.to_ne_bytes());
        settle(Netlink::open()?.call(&m.finish()), kind == RTM_NEWRULE)
    }

    fn route(&self, kind: u16, family: u8) -> io::Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope, type, flags. dst_len 0: the default route.
        let hdr = [family, 0, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0, 0, 0, 0];
        let mut m = Msg::new(kind, flags(kind == RTM_NEWROUTE), &hdr);
        m.attr(RTA_TABLE, &self.table.to_ne_bytes());
        m.attr(RTA_OIF, &LOOPBACK_IFINDEX.to_ne_bytes());
        settle(Netlink::open()?.call(&m.finish()), kind == RTM_NEWROUTE)
    }
}

fn flags(create: bool) -> u16 {
    let f = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
    (if create { f | libc::NLM_F_CREATE | libc::NLM_F_EXCL } else { f }) as u16
}

/// Adding what is there, or removing what is gone, is done.
fn settle(r: io::Result<()>, adding: bool) -> io::Result<()> {
    match r {
        Err(e) if adding && e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) if !adding && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
        other => other,
    }
}
