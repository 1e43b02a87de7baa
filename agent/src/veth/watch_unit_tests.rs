//! The link watch's bookkeeping and parsing, over links built here: no
//! kernel needed.

use std::time::{Duration, Instant};

use netlink_packet_core::{DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};

use super::{
    link::Link,
    rtnl::parse_frame,
    watch::{DEFAULT_PREFIXES, LinkEvent, Next, PodVethFilter, Relist, Tracker},
};

/// A pod veth as the node sees it: peer in namespace id 0.
fn pod_veth(index: u32, name: &str) -> Link {
    Link { index, name: Some(name.into()), veth: true, address: None, peer: Some(2), peer_netnsid: Some(0) }
}

fn new(ifindex: u32, name: &str) -> LinkEvent {
    LinkEvent::New { ifindex, name: name.into() }
}

fn gone(ifindex: u32) -> LinkEvent {
    LinkEvent::Gone { ifindex }
}

#[test]
fn the_default_filter_takes_common_cnis_and_the_bench() {
    let f = PodVethFilter::default();
    for name in ["lxc1a2b3c4d5e6f", "cali0123456789a", "veth1234abcd", "vethwepl1234", "eni0123456789a", "vlan0123456789a"] {
        assert!(f.name_matches(name), "{name}");
    }
    for name in ["gke0123456789a", "azv0123456789a", "veth-p1", "veth-client"] {
        assert!(f.name_matches(name), "{name}");
    }
    // The bench's uplink, Cilium's health endpoint and own devices, CNI bridges.
    for name in ["to-inet", "lxc_health", "cilium_host", "cni0", "eth0", "tmp1a2b3c", "flannel.1", "br-1234"] {
        assert!(!f.name_matches(name), "{name}");
    }
    assert_eq!(f.prefixes, DEFAULT_PREFIXES);
    // "": every veth whose peer is elsewhere (Antrea, OVN-Kubernetes).
    let all = PodVethFilter { prefixes: vec![String::new()], exclude: vec![] };
    assert!(all.name_matches("coredns-a5e3d7") && all.name_matches("lxc_health"));
}

#[test]
fn only_a_veth_with_its_peer_elsewhere_matches() {
    let f = PodVethFilter::default();
    assert!(f.matches(&pod_veth(5, "veth-p1")));
    let same_netns = Link { peer_netnsid: None, ..pod_veth(5, "veth-p1") };
    let not_veth = Link { veth: false, ..pod_veth(5, "veth-p1") };
    let no_name = Link { name: None, ..pod_veth(5, "veth-p1") };
    // A peer namespace that has no id (being torn down): still elsewhere.
    let dying = Link { peer_netnsid: Some(-1), ..pod_veth(5, "veth-p1") };
    assert!(f.matches(&dying));
    for l in [same_netns, not_veth, no_name, pod_veth(5, "to-inet")] {
        assert!(!f.matches(&l), "{l:?}");
    }
}

#[test]
fn a_link_is_new_once_until_it_goes() {
    let mut t = Tracker::new(PodVethFilter::default());
    assert_eq!(t.new_link(&pod_veth(5, "veth-p1")), Next::Report(new(5, "veth-p1")));
    // Up, down, an address, a new MTU: the same link.
    assert_eq!(t.new_link(&pod_veth(5, "veth-p1")), Next::Nothing);
    // Renamed while reported (even out of the prefixes): still the same.
    assert_eq!(t.new_link(&pod_veth(5, "other")), Next::Nothing);
    assert_eq!(t.del_link(5), Some(gone(5)));
    assert_eq!(t.del_link(5), None, "one Gone");
    // The index again: New again.
    assert_eq!(t.new_link(&pod_veth(5, "veth-p2")), Next::Report(new(5, "veth-p2")));
    // Never reported: no Gone.
    assert_eq!(t.del_link(9), None);
}

#[test]
fn a_link_that_starts_matching_is_new_then() {
    let mut t = Tracker::new(PodVethFilter::default());
    // Made under a temporary name, renamed (Cilium's tmp… to lxc…).
    assert_eq!(t.new_link(&pod_veth(7, "tmp1a2b3c")), Next::Nothing);
    assert_eq!(t.new_link(&pod_veth(7, "lxc1a2b3c")), Next::Report(new(7, "lxc1a2b3c")));
    // Its peer still in the node, then moved to the pod.
    let here = Link { peer_netnsid: None, ..pod_veth(8, "lxc9") };
    assert_eq!(t.new_link(&here), Next::Nothing);
    assert_eq!(t.new_link(&pod_veth(8, "lxc9")), Next::Report(new(8, "lxc9")));
}

#[test]
fn a_veth_with_its_peer_not_tied_yet_is_asked_for_again() {
    let mut t = Tracker::new(PodVethFilter::default());
    // As `veth_newlink` notifies the peer end: IFLA_LINK 0, no netnsid.
    let untied = Link { peer: Some(0), peer_netnsid: None, ..pod_veth(9, "veth1234") };
    assert_eq!(t.new_link(&untied), Next::AskAgain(9));
    let other_name = Link { name: Some("to-inet".into()), ..untied.clone() };
    assert_eq!(t.new_link(&other_name), Next::Nothing);
    // Both ends in the node: the peer is known, nothing to wait for.
    let local_pair = Link { peer: Some(10), ..untied };
    assert_eq!(t.new_link(&local_pair), Next::Nothing);
}

#[test]
fn a_listing_reports_the_difference() {
    let mut t = Tracker::new(PodVethFilter::default());
    let first =
        [pod_veth(5, "veth-a"), pod_veth(3, "veth-b"), pod_veth(4, "to-inet"), Link { veth: false, ..pod_veth(6, "veth-c") }];
    assert_eq!(t.resync(&first), vec![new(3, "veth-b"), new(5, "veth-a")], "in ifindex order, matching only");
    assert_eq!(t.resync(&first), vec![], "nothing changed");
    // veth-b gone; to-inet renamed into the prefixes; a new one; veth-a
    // renamed out of them (kept: the same device, as in `new_link`).
    let second = [pod_veth(5, "other"), pod_veth(4, "veth-r"), pod_veth(12, "cali1")];
    assert_eq!(t.resync(&second), vec![gone(3), new(4, "veth-r"), new(12, "cali1")]);
    // Index 5 now has a pod veth's name it did not have: taken for another
    // device on a reused index.
    let third = [pod_veth(5, "veth-z"), pod_veth(4, "veth-r"), pod_veth(12, "cali1")];
    assert_eq!(t.resync(&third), vec![gone(5), new(5, "veth-z")]);
    assert_eq!(t.resync(&[]), vec![gone(4), gone(5), gone(12)]);
}

#[test]
fn a_listing_after_notifications_agrees_with_them() {
    // Notifications read after the listing (they were queued behind the
    // overrun) that it already reflects report nothing again.
    let mut t = Tracker::new(PodVethFilter::default());
    assert_eq!(t.resync(&[pod_veth(5, "veth-a")]), vec![new(5, "veth-a")]);
    assert_eq!(t.new_link(&pod_veth(5, "veth-a")), Next::Nothing);
    assert_eq!(t.del_link(5), Some(gone(5)));
    assert_eq!(t.resync(&[]), vec![]);
}

#[test]
fn relisting_retries_with_a_growing_wait() {
    let t0 = Instant::now();
    let mut r = Relist::default();
    assert!(!r.is_due(t0));
    r.asap(t0);
    assert!(r.is_due(t0));
    assert_eq!(r.failed(t0), Duration::from_millis(500));
    assert!(!r.is_due(t0) && r.is_due(t0 + Duration::from_millis(500)));
    assert_eq!(r.failed(t0), Duration::from_secs(1));
    for _ in 0..10 {
        r.failed(t0);
    }
    assert_eq!(r.failed(t0), Duration::from_secs(30), "capped");
    // Lost notifications meanwhile: at once after all.
    r.asap(t0);
    assert!(r.is_due(t0));
    r.succeeded();
    assert!(!r.is_due(t0 + Duration::from_secs(60)));
    assert_eq!(r.failed(t0), Duration::from_millis(500), "the wait starts over");
}

fn encode(message_type_msg: RouteNetlinkMessage) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(message_type_msg));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// An attribute this crate parses and the kernel would never send like
/// that (IFLA_MTU of 1 byte) fails the whole message; the link's name,
/// kind and peer are still read.
#[test]
fn a_link_notification_with_an_unreadable_attribute_is_read_without_it() {
    let mut m = LinkMessage::default();
    m.header.index = 7;
    m.attributes = vec![
        LinkAttribute::IfName("veth-p1".into()),
        LinkAttribute::Other(DefaultNla::new(4, vec![1])),
        LinkAttribute::Link(2),
        LinkAttribute::LinkNetNsId(0),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
    ];
    for (msg, del) in [(RouteNetlinkMessage::NewLink(m.clone()), false), (RouteNetlinkMessage::DelLink(m), true)] {
        let frame = encode(msg);
        assert!(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&frame).is_err(), "the strict parse fails");
        let parsed = parse_frame(&frame).expect("read leniently");
        let link = match parsed.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) if !del => l,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) if del => l,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(Link::of(&link), pod_veth(7, "veth-p1"));
    }
    // Other message types are not guessed at; a cut frame is an error.
    let frame = encode(RouteNetlinkMessage::NewLink(LinkMessage::default()));
    assert!(parse_frame(&frame[..18]).is_err());
}

/// Every truncation and single-byte corruption of a notification: a
/// result or an error, never a panic; the tracker takes whatever parses.
#[test]
fn damaged_notifications_are_errors_not_panics() {
    let mut m = LinkMessage::default();
    m.header.index = 7;
    m.attributes = vec![
        LinkAttribute::IfName("veth-p1".into()),
        LinkAttribute::Link(2),
        LinkAttribute::LinkNetNsId(0),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
    ];
    let whole = encode(RouteNetlinkMessage::NewLink(m));
    let mut t = Tracker::new(PodVethFilter::default());
    let mut feed = |bytes: &[u8]| {
        if let Ok(NetlinkMessage { payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)), .. }) =
            parse_frame(bytes)
        {
            let _ = t.new_link(&Link::of(&l));
        }
    };
    for cut in 0..whole.len() {
        feed(&whole[..cut]);
    }
    for at in 0..whole.len() {
        for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut damaged = whole.clone();
            damaged[at] = value;
            feed(&damaged);
        }
    }
}
