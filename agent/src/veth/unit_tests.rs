//! The parsing helpers, over messages built here: no kernel needed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd},
    time::Duration,
};

use netlink_packet_core::{
    DefaultNla, DoneMessage, ErrorMessage, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
};

use netlink_sys::Socket;
use nix::sys::{
    socket::{AddressFamily, MsgFlags, SockFlag, SockType, send, setsockopt, socketpair, sockopt::ReceiveTimeout},
    time::TimeVal,
};

use super::{
    Netns, Role, Step, VethError, get_link,
    link::{Link, address_of, link_request, nsid_of},
    rtnl::{Collect, Fault, Rtnl, frames},
};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];

fn veth_msg(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes = vec![
        LinkAttribute::IfName("eth0".into()),
        LinkAttribute::Address(MAC.to_vec()),
        // An attribute this crate does not know: kept as `Other`, ignored.
        LinkAttribute::Other(DefaultNla::new(0x3fff, vec![1, 2, 3])),
        LinkAttribute::Link(22),
        LinkAttribute::LinkNetNsId(0),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
    ];
    m
}

/// `payload` as one netlink message with sequence number `seq`.
fn encode(seq: u32, flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = seq;
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn link_frame(seq: u32, index: u32) -> Vec<u8> {
    encode(seq, NLM_F_MULTIPART, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg(index))))
}

fn done_frame(seq: u32, code: i32) -> Vec<u8> {
    let mut done = DoneMessage::default();
    done.code = code;
    encode(seq, NLM_F_MULTIPART, NetlinkPayload::Done(done))
}

fn error_frame(seq: u32, code: i32) -> Vec<u8> {
    let mut err = ErrorMessage::default();
    err.code = std::num::NonZeroI32::new(code);
    err.header = vec![0; 16];
    encode(seq, 0, NetlinkPayload::Error(err))
}

#[test]
fn veth_link_attributes_are_read() {
    let link = Link::of(&veth_msg(11));
    assert_eq!(
        link,
        Link {
            index: 11,
            name: Some("eth0".into()),
            veth: true,
            address: Some(MAC.to_vec()),
            peer: Some(22),
            peer_netnsid: Some(0),
        }
    );
    assert_eq!(link.veth_peer_elsewhere(), Some((22, 0)));
    assert_eq!(link.mac(), Ok(MAC));
}

#[test]
fn only_a_veth_with_a_live_peer_in_a_namespace_with_an_id_leads_elsewhere() {
    let base = Link::of(&veth_msg(11));
    let dummy = Link { veth: false, ..base.clone() };
    let same_netns = Link { peer_netnsid: None, ..base.clone() };
    let peer_gone = Link { peer: Some(0), ..base.clone() };
    let no_id = Link { peer_netnsid: Some(-1), ..base };
    for l in [dummy, same_netns, peer_gone, no_id] {
        assert_eq!(l.veth_peer_elsewhere(), None, "{l:?}");
    }
    // A Kata pod's tap device.
    let mut tap = veth_msg(3);
    tap.attributes.retain(|a| !matches!(a, LinkAttribute::LinkInfo(_)));
    tap.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]));
    assert_eq!(Link::of(&tap).veth_peer_elsewhere(), None);
}

#[test]
fn a_hardware_address_that_is_not_a_mac_is_an_error() {
    let short = Link { address: Some(vec![1, 2, 3]), ..Link::default() };
    assert_eq!(short.mac(), Err("a 3-byte hardware address".into()));
    assert!(Link::default().mac().is_err());
}

#[test]
fn address_prefers_ifa_local() {
    let mut m = AddressMessage::default();
    m.header.index = 7;
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let local = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    m.attributes = vec![AddressAttribute::Address(peer), AddressAttribute::Local(local)];
    assert_eq!(address_of(&m), Some((7, local)));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
    m.attributes = vec![AddressAttribute::Address(v6)];
    assert_eq!(address_of(&m), Some((7, v6)));
    m.attributes = vec![AddressAttribute::Label("eth0".into())];
    assert_eq!(address_of(&m), None);
}

#[test]
fn nsid_not_assigned_is_none() {
    let mut m = NsidMessage::default();
    m.attributes = vec![NsidAttribute::Id(-1)];
    assert_eq!(nsid_of(&m), None);
    m.attributes = vec![NsidAttribute::Id(4)];
    assert_eq!(nsid_of(&m), Some(4));
    assert_eq!(nsid_of(&NsidMessage::default()), None);
}

#[test]
fn frames_split_a_datagram_and_refuse_bad_lengths() {
    let a = link_frame(1, 2);
    let b = done_frame(1, 0);
    let datagram = [a.clone(), b.clone()].concat();
    let got: Vec<_> = frames(&datagram).collect();
    assert_eq!(got, vec![Ok(&a[..]), Ok(&b[..])]);
    assert_eq!(frames(&[]).count(), 0);

    // Shorter than a header; a length below the header's; past the end.
    let mut bad = a.clone();
    bad[..4].copy_from_slice(&8u32.to_ne_bytes());
    let mut long = a.clone();
    long[..4].copy_from_slice(&(a.len() as u32 + 4).to_ne_bytes());
    for datagram in [vec![0; 7], bad, long] {
        let got: Vec<_> = frames(&datagram).collect();
        assert_eq!(got.len(), 1, "one error, then the walk stops");
        assert!(got[0].is_err());
    }
}

#[test]
fn frames_allow_an_unpadded_last_message() {
    // A message whose length is not a multiple of 4, last in its datagram.
    let mut m = link_frame(1, 2);
    m.push(0);
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(frames(&m).collect::<Vec<_>>(), vec![Ok(&m[..])]);
}

#[test]
fn a_dump_spans_datagrams_until_done() {
    let mut c = Collect::default();
    c.absorb(&[link_frame(5, 2), link_frame(5, 3)].concat(), 5).expect("first datagram");
    assert!(!c.done);
    c.absorb(&[link_frame(5, 4), done_frame(5, 0)].concat(), 5).expect("second datagram");
    assert!(c.done && !c.interrupted);
    assert_eq!(c.replies.len(), 3);
}

#[test]
fn other_sequence_numbers_are_skipped() {
    let mut c = Collect::default();
    c.absorb(&[link_frame(4, 2), error_frame(4, -1), link_frame(5, 3), done_frame(5, 0)].concat(), 5).expect("absorb");
    assert!(c.done);
    assert_eq!(c.replies.len(), 1);
}

#[test]
fn a_single_reply_ends_the_answer() {
    let mut reply = veth_msg(2);
    reply.attributes.truncate(1);
    let frame = encode(9, 0, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(reply)));
    let mut c = Collect::default();
    // Anything after the end of the answer is not taken.
    c.absorb(&[frame, link_frame(9, 3)].concat(), 9).expect("absorb");
    assert!(c.done);
    assert_eq!(c.replies.len(), 1);
}

#[test]
fn kernel_errors_and_failed_dumps_are_faults() {
    let mut c = Collect::default();
    assert_eq!(c.absorb(&error_frame(1, -libc::ENODEV), 1), Err(Fault::Kernel(libc::ENODEV)));
    let mut c = Collect::default();
    assert_eq!(c.absorb(&[link_frame(1, 2), done_frame(1, -libc::EMSGSIZE)].concat(), 1), Err(Fault::Kernel(libc::EMSGSIZE)));
    // An acknowledgement (error code 0) ends the answer.
    let mut c = Collect::default();
    c.absorb(&error_frame(1, 0), 1).expect("ack");
    assert!(c.done);
}

#[test]
fn dump_intr_is_noticed() {
    let mut c = Collect::default();
    let intr =
        encode(3, NLM_F_MULTIPART | NLM_F_DUMP_INTR, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg(2))));
    c.absorb(&[intr, done_frame(3, 0)].concat(), 3).expect("absorb");
    assert!(c.done && c.interrupted);
}

/// Every truncation, and every single-byte corruption, of a real-shaped
/// dump: a fault or a result, never a panic.
#[test]
fn damaged_replies_are_faults_not_panics() {
    let whole = [link_frame(1, 2), done_frame(1, 0)].concat();
    for cut in 0..whole.len() {
        let _ = Collect::default().absorb(&whole[..cut], 1);
    }
    for at in 0..whole.len() {
        for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut damaged = whole.clone();
            damaged[at] = value;
            let _ = Collect::default().absorb(&damaged, 1);
        }
    }
    // A message that claims more payload than its header says is there.
    let mut short = link_frame(1, 2);
    short.truncate(20);
    short[..4].copy_from_slice(&20u32.to_ne_bytes());
    assert!(matches!(Collect::default().absorb(&short, 1), Err(Fault::Malformed(_))));
}

/// An `Rtnl` over one end of a datagram socket pair: the test queues the
/// "kernel's" replies on the other end (where the requests go, unread).
fn socket_pair() -> (Rtnl, OwnedFd) {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).expect("socketpair");
    // SAFETY: `ours` is a socket nothing else owns; the Socket takes it over.
    let sock = unsafe { Socket::from_raw_fd(ours.into_raw_fd()) };
    let netns = Netns::of(Role::Host, theirs.as_fd());
    (Rtnl::over(sock, netns), theirs)
}

fn queue(peer: &OwnedFd, datagram: &[u8]) {
    send(peer.as_raw_fd(), datagram, MsgFlags::empty()).expect("queue a reply");
}

/// Larger than the first receive buffer (32 KiB): read whole, not cut.
#[test]
fn a_reply_larger_than_the_buffer_is_read_whole() {
    let (mut rt, peer) = socket_pair();
    let mut big = veth_msg(11);
    for kind in [0x3ffe, 0x3ffd] {
        big.attributes.push(LinkAttribute::Other(DefaultNla::new(kind, vec![7; 60_000])));
    }
    let frame = encode(1, 0, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(big)));
    assert!(frame.len() > 100_000);
    queue(&peer, &frame);
    let link = get_link(&mut rt, 11).expect("the large reply").expect("link 11");
    assert_eq!(link.name.as_deref(), Some("eth0"));
}

#[test]
fn enodev_is_no_such_link_and_other_errnos_are_errors() {
    let (mut rt, peer) = socket_pair();
    queue(&peer, &error_frame(1, -libc::ENODEV));
    assert!(get_link(&mut rt, 5).expect("ENODEV").is_none());
    queue(&peer, &error_frame(2, -libc::EPERM));
    let err = get_link(&mut rt, 5).expect_err("EPERM");
    assert!(matches!(err, VethError::Kernel { step: Step::GetLink(5), errno: libc::EPERM, .. }), "{err:?}");
    assert!(err.to_string().contains("asking for link 5 (RTM_GETLINK): the kernel answered: Operation not permitted"), "{err}");
}

#[test]
fn a_dump_that_keeps_changing_is_tried_again_then_an_error() {
    let intr = |seq| {
        let m = NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg(2)));
        [encode(seq, NLM_F_MULTIPART | NLM_F_DUMP_INTR, m), done_frame(seq, 0)].concat()
    };
    let (mut rt, peer) = socket_pair();
    queue(&peer, &intr(1));
    queue(&peer, &[link_frame(2, 2), link_frame(2, 3), done_frame(2, 0)].concat());
    let request = RouteNetlinkMessage::GetLink(link_request(0));
    assert_eq!(rt.dump(Step::DumpLinks, &request).expect("second try").len(), 2);
    for seq in 3..6 {
        queue(&peer, &intr(seq));
    }
    let err = rt.dump(Step::DumpLinks, &request).expect_err("changing every time");
    assert!(matches!(err, VethError::Interrupted { attempts: 3, .. }), "{err:?}");
}

#[test]
fn no_reply_is_a_timeout() {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).expect("socketpair");
    setsockopt(&ours, ReceiveTimeout, &TimeVal::new(0, Duration::from_millis(20).as_micros() as _)).expect("SO_RCVTIMEO");
    // SAFETY: as in `socket_pair`.
    let sock = unsafe { Socket::from_raw_fd(ours.into_raw_fd()) };
    let mut rt = Rtnl::over(sock, Netns::of(Role::Pod, theirs.as_fd()));
    let err = rt.recv().expect_err("nothing queued");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
}
