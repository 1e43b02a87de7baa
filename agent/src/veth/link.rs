//! What this module reads of rtnetlink replies: pure functions over the
//! parsed messages, so odd replies are tested without a kernel.

use std::net::IpAddr;

use netlink_packet_core::{NlasIterator, ParseableParametrized as _};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkExtentMask, LinkHeader, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
};

/// `struct ifinfomsg`, before a link message's attributes.
const LINK_HEADER_LEN: usize = 16;

/// The attributes of one link (`RTM_NEWLINK`) this module needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: Option<String>,
    /// `IFLA_LINKINFO` / `IFLA_INFO_KIND` is "veth".
    pub veth: bool,
    /// `IFLA_ADDRESS`: the hardware address.
    pub address: Option<Vec<u8>>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex in the peer's namespace
    /// (`veth_get_iflink` in drivers/net/veth.c; 0 once the peer is gone).
    pub peer: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, in the namespace that asked, of the
    /// namespace the peer is in; present only when that is not the link's
    /// own namespace (`rtnl_fill_link_netnsid` in net/core/rtnetlink.c,
    /// from `veth_get_link_net`).
    pub peer_netnsid: Option<i32>,
}

impl Link {
    pub(super) fn of(msg: &LinkMessage) -> Self {
        let mut link = Self { index: msg.header.index, ..Self::default() };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = Some(name.clone()),
                LinkAttribute::Address(mac) => link.address = Some(mac.clone()),
                LinkAttribute::Link(peer) => link.peer = Some(*peer),
                LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    link.veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        link
    }

    /// A veth whose peer is in another namespace, seen from the namespace
    /// that asked as id `nsid`: (peer ifindex, nsid). Not for a peer that is
    /// gone (ifindex 0) or whose namespace has no id (negative: the kernel
    /// could not assign one, e.g. the namespace is being torn down).
    pub(super) fn veth_peer_elsewhere(&self) -> Option<(u32, i32)> {
        match (self.veth, self.peer, self.peer_netnsid) {
            (true, Some(peer), Some(nsid)) if peer != 0 && nsid >= 0 => Some((peer, nsid)),
            _ => None,
        }
    }

    /// The hardware address as a MAC (a veth's is always 6 bytes).
    pub(super) fn mac(&self) -> Result<[u8; 6], String> {
        match &self.address {
            Some(a) => <[u8; 6]>::try_from(a.as_slice()).map_err(|_| format!("a {}-byte hardware address", a.len())),
            None => Err("no hardware address (IFLA_ADDRESS)".into()),
        }
    }
}

/// A link message (`ifinfomsg` and attributes, no netlink header) read
/// attribute by attribute, leaving out those this crate cannot parse:
/// `LinkMessage::parse` fails on the first one, and one attribute a newer
/// kernel formats differently (or a bug of this crate) must not hide a
/// link whose name, kind and peer are readable. `None` without a header.
pub(super) fn link_lenient(payload: &[u8]) -> Option<LinkMessage> {
    let header = LinkHeader::parse(payload).ok()?;
    let family = header.interface_family;
    let mut msg = LinkMessage::default();
    msg.header = header;
    for nla in NlasIterator::new(payload.get(LINK_HEADER_LEN..)?) {
        // A length that runs past the message: nothing after it is framed.
        let Ok(nla) = nla else { break };
        if let Ok(attr) = LinkAttribute::parse_with_param(&nla, family) {
            msg.attributes.push(attr);
        }
    }
    Some(msg)
}

/// The request attributes of every link query: no statistics in the
/// replies (most of a link message otherwise; `RTEXT_FILTER_SKIP_STATS`,
/// which kernels that do not know it ignore).
pub(super) fn link_request(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    msg
}

/// (ifindex, address) of an `RTM_NEWADDR`: `IFA_LOCAL` if present (on a
/// point-to-point IPv4 device `IFA_ADDRESS` is the far end), else
/// `IFA_ADDRESS` (all IPv6 has).
pub(super) fn address_of(msg: &AddressMessage) -> Option<(u32, IpAddr)> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some((msg.header.index, *ip)),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address.map(|ip| (msg.header.index, ip))
}

/// `NETNSA_NSID` of an `RTM_NEWNSID` reply, if assigned
/// (`NETNSA_NSID_NOT_ASSIGNED` is -1).
pub(super) fn nsid_of(msg: &NsidMessage) -> Option<i32> {
    msg.attributes.iter().find_map(|a| match a {
        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
        _ => None,
    })
}
