//! A pod's veth devices, found over rtnetlink: which device inside the
//! pod's network namespace leads to the host namespace, and which device
//! is its other end there.
//!
//! A pod-side veth reports its peer as `IFLA_LINK` (the peer's ifindex, in
//! the peer's namespace) and `IFLA_LINK_NETNSID` (the peer's namespace, as
//! an id *of the namespace that asks*: ids are per namespace, like file
//! descriptors; net/core/net_namespace.c). So the question goes to a socket
//! in the pod namespace, and so does "what id do you give the host
//! namespace?" (`RTM_GETNSID` with `NETNSA_FD`); equal ids mean the same
//! namespace. The host end is then asked for by ifindex from a socket in
//! the host namespace, and must point back: a veth whose `IFLA_LINK` is the
//! pod device and whose `IFLA_LINK_NETNSID` is the pod namespace. That
//! guards against an ifindex reused between the two questions.
//!
//! Asking about a veth makes the kernel give its peer's namespace an id in
//! the asking namespace if it had none (`peernet2id_alloc` in
//! `rtnl_fill_link_netnsid`), as `ip link` does; nothing else is changed.
//! If the pod namespace still has no id for the host namespace after the
//! link dump, no veth there leads to it.

pub mod attach;
mod link;
mod rtnl;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod unit_tests;
pub mod watch;
#[cfg(test)]
mod watch_tests;
#[cfg(test)]
mod watch_unit_tests;

use std::{
    collections::HashMap,
    fmt, io,
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
};

use netlink_packet_route::{
    RouteNetlinkMessage,
    address::AddressMessage,
    nsid::{NsidAttribute, NsidMessage},
};
use thiserror::Error;

use self::{
    link::{Link, address_of, link_request, nsid_of},
    rtnl::{Rtnl, fd_attr},
};

/// A veth pair between a pod's network namespace and the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    pub pod_ifindex: u32,
    pub pod_ifname: String,
    pub pod_mac: [u8; 6],
    pub host_ifindex: u32,
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    /// Addresses on the pod-side device now, IPv6 link-local included (may
    /// be empty: gVisor's runsc removes them, keeping them in its own stack).
    pub pod_addrs: Vec<IpAddr>,
}

/// A veth in the host namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    pub ifindex: u32,
    pub ifname: String,
    pub mac: [u8; 6],
    /// `IFLA_LINK`: the peer's ifindex in its namespace (`None` or 0: gone).
    pub peer_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace as an id of the host
    /// namespace (`None`: the peer is in the host namespace too).
    pub peer_netnsid: Option<i32>,
}

/// Which of the two namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Pod,
    Host,
}

/// A network namespace as errors name it: its role and its inode (as in
/// `readlink /proc/PID/ns/net`, `net:[INODE]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Netns {
    pub role: Role,
    /// (device, inode) of the namespace file; `None` if `fstat` failed.
    id: Option<(u64, u64)>,
}

impl Netns {
    fn of(role: Role, fd: BorrowedFd<'_>) -> Self {
        let id = nix::sys::stat::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino));
        Self { role, id }
    }

    /// Whether the calling thread is in this namespace already (the agent
    /// usually runs in the host's): then no thread needs to enter it.
    fn is_current_thread_netns(&self) -> bool {
        let current = nix::sys::stat::stat("/proc/thread-self/ns/net").ok().map(|st| (st.st_dev, st.st_ino));
        self.id.is_some() && current == self.id
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Pod => "pod",
            Role::Host => "host",
        };
        match self.id {
            Some((_, inode)) => write!(f, "{role} network namespace net:[{inode}]"),
            None => write!(f, "{role} network namespace"),
        }
    }
}

/// What was being done when an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Enter,
    OpenSocket,
    DumpLinks,
    DumpAddrs,
    GetNsid,
    GetLink(u32),
    Subscribe,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Enter => f.write_str("entering it (setns)"),
            Self::OpenSocket => f.write_str("opening a NETLINK_ROUTE socket"),
            Self::DumpLinks => f.write_str("listing links (RTM_GETLINK dump)"),
            Self::DumpAddrs => f.write_str("listing addresses (RTM_GETADDR dump)"),
            Self::GetNsid => f.write_str("asking its id for the other namespace (RTM_GETNSID)"),
            Self::GetLink(index) => write!(f, "asking for link {index} (RTM_GETLINK)"),
            Self::Subscribe => f.write_str("subscribing to link notifications (RTNLGRP_LINK)"),
        }
    }
}

#[derive(Debug, Error)]
pub enum VethError {
    #[error("{netns}: {step}: {source}")]
    Io { netns: Netns, step: Step, source: io::Error },
    #[error("{netns}: {step}: the kernel answered: {}", io::Error::from_raw_os_error(*errno))]
    Kernel { netns: Netns, step: Step, errno: i32 },
    #[error("{netns}: {step}: malformed reply: {detail}")]
    Malformed { netns: Netns, step: Step, detail: String },
    #[error("{netns}: {step}: the list changed during each of {attempts} tries (NLM_F_DUMP_INTR)")]
    Interrupted { netns: Netns, step: Step, attempts: u32 },
    #[error("{netns}: the thread that entered it panicked")]
    Thread { netns: Netns },
}

/// The veth devices in the pod namespace `pod_netns` whose peer is in
/// `host_netns`, with both ends' names and MACs and the pod end's
/// addresses. Loopback, other devices (a Kata pod's tap), veths whose peer
/// is in the pod namespace or a third one, and pairs torn down while being
/// looked at are left out. Neither namespace is entered by the calling
/// thread.
pub fn pod_links(pod_netns: impl AsFd, host_netns: impl AsFd) -> Result<Vec<PodLink>, VethError> {
    let (pod_fd, host_fd) = (pod_netns.as_fd(), host_netns.as_fd());
    let mut pod = Rtnl::open(pod_fd, Netns::of(Role::Pod, pod_fd))?;
    // First: filling IFLA_LINK_NETNSID gives the host namespace an id in
    // the pod namespace if a veth leads there (see the module doc).
    let links = dump_links(&mut pod)?;
    let leads_out: Vec<(&Link, u32, i32)> =
        links.iter().filter_map(|l| l.veth_peer_elsewhere().map(|(peer, nsid)| (l, peer, nsid))).collect();
    if leads_out.is_empty() {
        return Ok(Vec::new());
    }
    let Some(host_id) = nsid(&mut pod, host_fd)? else {
        return Ok(Vec::new());
    };
    let to_host: Vec<(&Link, u32)> =
        leads_out.into_iter().filter(|&(_, _, nsid)| nsid == host_id).map(|(l, peer, _)| (l, peer)).collect();
    if to_host.is_empty() {
        return Ok(Vec::new());
    }
    let mut addrs = dump_addrs(&mut pod)?;

    let mut host = Rtnl::open(host_fd, Netns::of(Role::Host, host_fd))?;
    let mut ends = Vec::new();
    for (pod_link, peer) in to_host {
        if let Some(host_link) = host_veth(&mut host, peer)?
            && host_link.peer_ifindex == Some(pod_link.index)
        {
            ends.push((pod_link, host_link));
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    // Asked after the host links: their replies gave the pod namespace an
    // id in the host namespace.
    let pod_id = nsid(&mut host, pod_fd)?;
    let mut out = Vec::new();
    for (pod_link, host_link) in ends {
        if pod_id.is_none() || host_link.peer_netnsid != pod_id {
            continue;
        }
        let (pod_ifname, pod_mac) = name_and_mac(&pod, Step::DumpLinks, pod_link)?;
        out.push(PodLink {
            pod_ifindex: pod_link.index,
            pod_ifname,
            pod_mac,
            host_ifindex: host_link.ifindex,
            host_ifname: host_link.ifname,
            host_mac: host_link.mac,
            pod_addrs: addrs.remove(&pod_link.index).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The veth with index `ifindex` in `host_netns`; `None` if there is no
/// such device or it is not a veth.
pub fn host_veth_by_index(host_netns: impl AsFd, ifindex: u32) -> Result<Option<HostLink>, VethError> {
    let fd = host_netns.as_fd();
    host_veth(&mut Rtnl::open(fd, Netns::of(Role::Host, fd))?, ifindex)
}

/// Whether a device with index `ifindex` (of any kind) exists in
/// `host_netns`: one `RTM_GETLINK`, for checking that an attached
/// interface is still there.
pub fn link_exists(host_netns: impl AsFd, ifindex: u32) -> Result<bool, VethError> {
    let fd = host_netns.as_fd();
    Ok(get_link(&mut Rtnl::open(fd, Netns::of(Role::Host, fd))?, ifindex)?.is_some())
}

fn dump_links(rt: &mut Rtnl) -> Result<Vec<Link>, VethError> {
    let replies = rt.dump(Step::DumpLinks, &RouteNetlinkMessage::GetLink(link_request(0)))?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::of(l)),
            _ => None,
        })
        .collect())
}

/// Every address in the namespace, by ifindex, in the kernel's order.
fn dump_addrs(rt: &mut Rtnl) -> Result<HashMap<u32, Vec<IpAddr>>, VethError> {
    let replies = rt.dump(Step::DumpAddrs, &RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut by_link: HashMap<u32, Vec<IpAddr>> = HashMap::new();
    for (index, ip) in replies.iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a) => address_of(a),
        _ => None,
    }) {
        by_link.entry(index).or_default().push(ip);
    }
    Ok(by_link)
}

/// The id `rt`'s namespace gives the namespace `other`, if any.
fn nsid(rt: &mut Rtnl, other: BorrowedFd<'_>) -> Result<Option<i32>, VethError> {
    let mut req = NsidMessage::default();
    req.attributes.push(NsidAttribute::Fd(fd_attr(other)));
    match rt.get(Step::GetNsid, &RouteNetlinkMessage::GetNsId(req))? {
        RouteNetlinkMessage::NewNsId(reply) => Ok(nsid_of(&reply)),
        other => Err(rt.malformed(Step::GetNsid, unexpected(&other))),
    }
}

/// The link with index `ifindex`, `None` if there is none (`ENODEV`).
fn get_link(rt: &mut Rtnl, ifindex: u32) -> Result<Option<Link>, VethError> {
    let step = Step::GetLink(ifindex);
    // Index 0 would ask by name, and no device has it.
    if ifindex == 0 {
        return Ok(None);
    }
    match rt.get(step, &RouteNetlinkMessage::GetLink(link_request(ifindex))) {
        Ok(RouteNetlinkMessage::NewLink(msg)) if msg.header.index == ifindex => Ok(Some(Link::of(&msg))),
        Ok(RouteNetlinkMessage::NewLink(msg)) => Err(rt.malformed(step, format!("the reply is about link {}", msg.header.index))),
        Ok(other) => Err(rt.malformed(step, unexpected(&other))),
        Err(VethError::Kernel { errno: libc::ENODEV, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn host_veth(rt: &mut Rtnl, ifindex: u32) -> Result<Option<HostLink>, VethError> {
    let Some(link) = get_link(rt, ifindex)?.filter(|l| l.veth) else {
        return Ok(None);
    };
    let (ifname, mac) = name_and_mac(rt, Step::GetLink(ifindex), &link)?;
    Ok(Some(HostLink { ifindex, ifname, mac, peer_ifindex: link.peer, peer_netnsid: link.peer_netnsid }))
}

fn name_and_mac(rt: &Rtnl, step: Step, link: &Link) -> Result<(String, [u8; 6]), VethError> {
    let bad = |what: String| rt.malformed(step, format!("link {}: {what}", link.index));
    let name = link.name.clone().ok_or_else(|| bad("no name (IFLA_IFNAME)".into()))?;
    let mac = link.mac().map_err(bad)?;
    Ok((name, mac))
}

/// A reply no request of this module gets, for error messages.
fn unexpected(msg: &RouteNetlinkMessage) -> String {
    format!("unexpected reply of type {}", msg.message_type())
}
