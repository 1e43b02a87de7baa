//! The node's pods' veths as they appear and go, for attaching the veth
//! programs to each before the agent knows whose it is.
//!
//! A NETLINK_ROUTE socket in the node's namespace joins `RTNLGRP_LINK`:
//! the kernel multicasts an `RTM_NEWLINK` there whenever a link is
//! registered, changes (flags, carrier, name, MTU, ...) or arrives from
//! another namespace, and an `RTM_DELLINK` when one is unregistered or
//! leaves (`rtmsg_ifinfo` in net/core/rtnetlink.c; `__dev_notify_flags`,
//! `netdev_state_change` from the linkwatch, `dev_change_net_namespace`).
//! The socket joins before the first dump (`LinkWatch::open`), so a link
//! made between the two is in the dump, in a notification, or both.
//!
//! Every `RTM_NEWLINK` is judged again (`PodVethFilter`), so a veth that
//! starts matching later is reported then: renamed into a pod prefix, or
//! its peer moved into a pod's namespace (Cilium makes `lxc…` with a
//! `tmp…` peer in the node, moves the peer, and the pod end coming up
//! turns the node end's carrier on, which is notified). A veth made from
//! the pod's side with its node end as the peer (`ip link add eth0 type
//! veth peer name vethX netns NODE`, as the CNI plugins' `SetupVeth` does)
//! is notified in the node before the two ends are tied (`veth_newlink`
//! configures the peer first): no peer namespace yet, `IFLA_LINK` 0. Such
//! a notification is followed by an `RTM_GETLINK`, which waits for the
//! creation to finish under the RTNL lock, so the veth is reported when
//! it is made rather than when it is set up.
//!
//! Notifications are lost when the socket's buffer overflows (the kernel
//! then fails the next read with `ENOBUFS`, `netlink_overrun`): the links
//! are listed again and the difference reported (`Tracker::resync`). The
//! buffer is large (`RCVBUF`) so that takes a burst of thousands.

use std::{
    collections::HashMap,
    io,
    os::fd::BorrowedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Sender,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::Socket;
use nix::sys::{
    socket::{
        setsockopt,
        sockopt::{RcvBuf, RcvBufForce, ReceiveTimeout},
    },
    time::TimeVal,
};
use tracing::{info, warn};

use super::{
    Netns, Role, Step, VethError, dump_links, get_link,
    link::Link,
    rtnl::{Rtnl, frames, parse_frame},
};

/// Host-side name prefixes of common CNIs' pod veths: Cilium `lxc<hash>`
/// (`lxc_health` is its own health endpoint, see `DEFAULT_EXCLUDE`);
/// Calico and Canal `cali<hash>`; the CNI reference plugins' `veth<hex>`
/// (bridge, ptp: flannel, kindnet, k3s, kube-router), Weave `vethwepl…`,
/// Docker and Podman, and this repo's bench (`veth-<pod>`); AWS VPC CNI
/// `eni<hash>` and, for pods with their own security groups, `vlan<hash>`;
/// GKE's `gke<hash>`; Azure CNI `azv<hash>`. Antrea (`<pod name>-<hash>`),
/// OVN-Kubernetes (the container id) and Kube-OVN (`<id>_h`) use no fixed
/// prefix: there, configure `""` (every veth whose peer is in another
/// namespace). Cilium's netkit mode makes netkit devices, not veths.
pub const DEFAULT_PREFIXES: &[&str] = &["lxc", "cali", "veth", "eni", "vlan", "gke", "azv"];

/// Names left out although a prefix matches: Cilium's health endpoint,
/// which answers the other nodes' health probes and is no pod.
pub const DEFAULT_EXCLUDE: &[&str] = &["lxc_health"];

/// The socket buffer for notifications: one `RTM_NEWLINK` takes 2-4 KiB
/// with its statistics, so 8 MiB holds a burst of a few thousand.
/// `SO_RCVBUFFORCE` (CAP_NET_ADMIN) passes `net.core.rmem_max`.
const RCVBUF: usize = 8 << 20;

/// How long one read waits before `stop` is looked at again.
const POLL: Duration = Duration::from_millis(200);

/// After a failed listing, the wait before the next, doubling up to
/// `RETRY_MAX` (a link this crate cannot read would fail every one).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Which host-side interfaces are pods' veths: a veth (`IFLA_INFO_KIND`)
/// whose peer is in another namespace (`IFLA_LINK_NETNSID` present; the
/// node's own veth pairs have none) and whose name has one of `prefixes`
/// and is none of `exclude`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodVethFilter {
    pub prefixes: Vec<String>,
    pub exclude: Vec<String>,
}

impl Default for PodVethFilter {
    fn default() -> Self {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        Self { prefixes: owned(DEFAULT_PREFIXES), exclude: owned(DEFAULT_EXCLUDE) }
    }
}

impl PodVethFilter {
    /// Whether an interface name is one of a pod veth.
    pub fn name_matches(&self, name: &str) -> bool {
        !self.exclude.iter().any(|e| e == name) && self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    pub(super) fn matches(&self, link: &Link) -> bool {
        link.veth && link.peer_netnsid.is_some() && link.name.as_deref().is_some_and(|n| self.name_matches(n))
    }
}

/// A change in the node's pod veths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A pod veth not reported before (or since its `Gone`).
    New { ifindex: u32, name: String },
    /// A reported pod veth left the node's namespace: deleted, or moved.
    /// Also sent, before a `New` for the same index, when a listing after
    /// lost notifications finds another name there (see `Tracker::resync`).
    Gone { ifindex: u32 },
}

/// The pod veths reported (`New` and no `Gone` since), by ifindex, with
/// their names as last seen. Pure: fed parsed links, no socket.
#[derive(Debug)]
pub(super) struct Tracker {
    filter: PodVethFilter,
    reported: HashMap<u32, String>,
}

/// What one `RTM_NEWLINK` calls for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Report(LinkEvent),
    /// A veth with a pod veth's name whose peer is not tied yet: ask for it
    /// again (see the module doc).
    AskAgain(u32),
    Nothing,
}

impl Tracker {
    pub(super) fn new(filter: PodVethFilter) -> Self {
        Self { filter, reported: HashMap::new() }
    }

    /// An `RTM_NEWLINK` (a notification, or the answer to `AskAgain`).
    pub(super) fn new_link(&mut self, link: &Link) -> Next {
        if let Some(name) = self.reported.get_mut(&link.index) {
            // The same device (its RTM_DELLINK would have come first): a
            // change of state, or a rename, which leaves it a pod veth (the
            // programs stay on it until it goes).
            if let Some(new) = &link.name {
                new.clone_into(name);
            }
            return Next::Nothing;
        }
        if self.filter.matches(link) {
            let name = link.name.clone().unwrap_or_default();
            self.reported.insert(link.index, name.clone());
            return Next::Report(LinkEvent::New { ifindex: link.index, name });
        }
        let untied = link.veth && link.peer == Some(0) && link.peer_netnsid.is_none();
        if untied && link.name.as_deref().is_some_and(|n| self.filter.name_matches(n)) {
            return Next::AskAgain(link.index);
        }
        Next::Nothing
    }

    /// An `RTM_DELLINK`.
    pub(super) fn del_link(&mut self, ifindex: u32) -> Option<LinkEvent> {
        self.reported.remove(&ifindex).map(|_| LinkEvent::Gone { ifindex })
    }

    /// A full listing (the first, or after lost notifications): `Gone` for
    /// reported links no longer there, `New` for matching links not
    /// reported, in ifindex order. A reported index whose link now has
    /// another name and matches is taken for another device on a reused
    /// index (`Gone` then `New`): the kernel hands out indices cyclically
    /// (`dev_index_reserve`), so that takes an explicit index; missing it
    /// would leave a pod veth without programs, while a rename missed in
    /// the gap costs one detach and attach.
    pub(super) fn resync(&mut self, links: &[Link]) -> Vec<LinkEvent> {
        let now: HashMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
        let mut gone: Vec<u32> = Vec::new();
        for (&index, name) in &mut self.reported {
            match now.get(&index) {
                None => gone.push(index),
                Some(l) => match l.name.as_deref() {
                    Some(new) if new != name.as_str() && self.filter.matches(l) => gone.push(index),
                    Some(new) => new.clone_into(name),
                    None => {}
                },
            }
        }
        gone.sort_unstable();
        let mut events: Vec<LinkEvent> = gone.into_iter().filter_map(|i| self.del_link(i)).collect();
        let mut fresh: Vec<&Link> = links.iter().filter(|l| !self.reported.contains_key(&l.index)).collect();
        fresh.sort_by_key(|l| l.index);
        for link in fresh {
            if let Next::Report(event) = self.new_link(link) {
                events.push(event);
            }
        }
        events
    }
}

/// When the links are to be listed again.
#[derive(Debug, Default)]
pub(super) struct Relist {
    due: Option<Instant>,
    retry: Option<Duration>,
}

impl Relist {
    pub(super) fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|due| now >= due)
    }

    /// Notifications were lost: at once (unless one is pending already).
    pub(super) fn asap(&mut self, now: Instant) {
        self.due = Some(self.due.map_or(now, |due| due.min(now)));
    }

    pub(super) fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// Returns the wait before the next try.
    pub(super) fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.retry.map_or(RETRY_FIRST, |r| (r * 2).min(RETRY_MAX));
        self.retry = Some(wait);
        self.due = Some(now + wait);
        wait
    }
}

/// A subscription to the node namespace's link notifications, with the
/// pod veths found by the first listing.
pub struct LinkWatch {
    /// Joined to RTNLGRP_LINK; only ever read.
    events: Rtnl,
    /// For listings and `RTM_GETLINK`: their replies must not interleave
    /// with notifications (`Rtnl` skips what is not the answer).
    queries: Rtnl,
    tracker: Tracker,
    initial: Vec<(u32, String)>,
    overruns: Arc<AtomicU64>,
}

impl LinkWatch {
    /// Joins `RTNLGRP_LINK` in `node_ns`, then lists the links there.
    pub fn open(node_ns: BorrowedFd<'_>, filter: PodVethFilter) -> Result<Self, VethError> {
        Self::open_with(node_ns, filter, RCVBUF)
    }

    /// `open` with a chosen socket buffer (the tests' overruns).
    pub(super) fn open_with(node_ns: BorrowedFd<'_>, filter: PodVethFilter, rcvbuf: usize) -> Result<Self, VethError> {
        let netns = Netns::of(Role::Host, node_ns);
        let mut events = Rtnl::open(node_ns, netns)?;
        subscribe(events.socket_mut(), rcvbuf).map_err(|source| VethError::Io { netns, step: Step::Subscribe, source })?;
        let mut queries = Rtnl::open(node_ns, netns)?;
        let mut tracker = Tracker::new(filter);
        let initial = tracker
            .resync(&dump_links(&mut queries)?)
            .into_iter()
            .filter_map(|e| match e {
                LinkEvent::New { ifindex, name } => Some((ifindex, name)),
                LinkEvent::Gone { .. } => None,
            })
            .collect();
        Ok(Self { events, queries, tracker, initial, overruns: Arc::default() })
    }

    /// The pod veths that existed at `open`, by ifindex and name, in
    /// ifindex order. The thread does not report them again.
    pub fn initial(&self) -> &[(u32, String)] {
        &self.initial
    }

    /// How many times notifications were lost (each followed by a new
    /// listing), for telemetry.
    pub fn overruns(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.overruns)
    }

    /// Starts a thread that sends each change into `tx`, in the order the
    /// kernel made them, and calls `poke` after each batch. After lost
    /// notifications the listing comes before the notifications that
    /// followed it, so a link made and deleted in between can be reported
    /// `New` and then `Gone` when it is gone already; the last word on each
    /// ifindex is right. Ends within `POLL` of `stop`, or at the first
    /// event after `tx`'s receiver is dropped; errors are logged, never the
    /// end of the thread.
    pub fn spawn(
        self,
        tx: Sender<LinkEvent>,
        poke: impl Fn() + Send + 'static,
        stop: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        thread::Builder::new().name("pc-linkwatch".into()).spawn(move || self.run(&tx, &poke, &stop))
    }

    fn run(mut self, tx: &Sender<LinkEvent>, poke: &dyn Fn(), stop: &AtomicBool) {
        let mut relist = Relist::default();
        while !stop.load(Ordering::Relaxed) {
            let events = if relist.is_due(Instant::now()) { self.relist(&mut relist) } else { self.read(&mut relist) };
            if events.is_empty() {
                continue;
            }
            for event in events {
                if tx.send(event).is_err() {
                    return;
                }
            }
            poke();
        }
    }

    fn relist(&mut self, relist: &mut Relist) -> Vec<LinkEvent> {
        match dump_links(&mut self.queries) {
            Ok(links) => {
                relist.succeeded();
                let events = self.tracker.resync(&links);
                info!(changes = events.len(), "links listed again (link notifications lost or unreadable)");
                events
            }
            Err(e) => {
                let wait = relist.failed(Instant::now());
                warn!(error = %e, "listing the links again failed; next try in {wait:?}");
                Vec::new()
            }
        }
    }

    /// One datagram of notifications.
    fn read(&mut self, relist: &mut Relist) -> Vec<LinkEvent> {
        let len = match self.events.recv() {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Vec::new(),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.overruns.fetch_add(1, Ordering::Relaxed);
                warn!("link notifications lost (socket buffer overrun): listing the links again");
                relist.asap(Instant::now());
                return Vec::new();
            }
            Err(e) => {
                // Not known to happen; what it lost is found by a listing.
                warn!(error = %e, "reading link notifications failed");
                thread::sleep(POLL);
                relist.asap(Instant::now());
                return Vec::new();
            }
        };
        let mut events = Vec::new();
        let mut ask_again = Vec::new();
        for frame in frames(self.events.received(len)) {
            let msg = match frame.and_then(parse_frame) {
                Ok(msg) => msg,
                Err(detail) => {
                    // It may have been a pod veth's: the listing will say.
                    warn!(%detail, "unreadable link notification; listing the links again");
                    relist.asap(Instant::now());
                    break;
                }
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => match self.tracker.new_link(&Link::of(&m)) {
                    Next::Report(event) => events.push(event),
                    Next::AskAgain(index) => ask_again.push(index),
                    Next::Nothing => {}
                },
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    events.extend(self.tracker.del_link(m.header.index));
                }
                _ => {}
            }
        }
        for index in ask_again {
            match get_link(&mut self.queries, index) {
                Ok(Some(link)) => {
                    if let Next::Report(event) = self.tracker.new_link(&link) {
                        events.push(event);
                    }
                }
                // Gone already: its RTM_DELLINK follows.
                Ok(None) => {}
                // Reported at its next notification (set up: carrier).
                Err(e) => warn!(error = %e, index, "asking again for a new veth failed"),
            }
        }
        events
    }
}

/// Receive buffer, address, group, read timeout. Bound first: a multicast
/// skips the sockets whose port id is the one it excludes, 0 for the
/// kernel's notifications, and 0 is an unbound socket's
/// (`do_one_broadcast` in net/netlink/af_netlink.c).
fn subscribe(sock: &mut Socket, rcvbuf: usize) -> io::Result<()> {
    if setsockopt(&*sock, RcvBufForce, &rcvbuf).is_err() {
        // Without CAP_NET_ADMIN: capped at net.core.rmem_max.
        setsockopt(&*sock, RcvBuf, &rcvbuf)?;
    }
    sock.bind_auto()?;
    sock.add_membership(libc::RTNLGRP_LINK)?;
    setsockopt(&*sock, ReceiveTimeout, &TimeVal::new(0, POLL.as_micros() as _))?;
    Ok(())
}
