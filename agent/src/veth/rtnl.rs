//! A NETLINK_ROUTE socket in a chosen network namespace, and the
//! request/reply exchange over it.
//!
//! A netlink socket answers for the namespace it was created in
//! (`sock_net(skb->sk)` in net/core/rtnetlink.c), whichever thread uses it
//! later: a short-lived thread `setns`es into the namespace only to create
//! it, so the caller's thread never changes namespace.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    thread,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    Parseable as _,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::{
    sched::{CloneFlags, setns},
    sys::{
        socket::{setsockopt, sockopt::ReceiveTimeout},
        time::TimeVal,
    },
};

use super::{Netns, Step, VethError, link::link_lenient};

/// The first receive buffer: the kernel sizes dump datagrams after the
/// reader's buffer, up to 32 KiB (`max_recvmsg_len` in
/// net/netlink/af_netlink.c); a larger datagram grows it (`recv`).
const RECV_BUF: usize = 32 * 1024;

/// How long one reply may take. The kernel answers at once; this only
/// keeps a lost reply from blocking the caller forever.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times in all a dump is tried while the kernel marks it
/// inconsistent (`NLM_F_DUMP_INTR`: the list changed while being read).
const DUMP_ATTEMPTS: u32 = 3;

const HEADER_LEN: usize = 16;

/// A NETLINK_ROUTE socket that lives in `netns`.
pub(super) struct Rtnl {
    sock: Socket,
    netns: Netns,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the namespace `ns` (described by `netns` in errors).
    pub(super) fn open(ns: BorrowedFd<'_>, netns: Netns) -> Result<Self, VethError> {
        let io_err = |step| move |source| VethError::Io { netns, step, source };
        let sock = if netns.is_current_thread_netns() {
            new_socket().map_err(io_err(Step::OpenSocket))?
        } else {
            thread::scope(|s| {
                s.spawn(move || {
                    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| io_err(Step::Enter)(io::Error::from(e)))?;
                    new_socket().map_err(io_err(Step::OpenSocket))
                })
                .join()
                .map_err(|_| VethError::Thread { netns })?
            })?
        };
        Ok(Self::over(sock, netns))
    }

    /// A socket made elsewhere (the unit tests' socket pairs).
    pub(super) fn over(sock: Socket, netns: Netns) -> Self {
        Self { sock, netns, seq: 0, buf: vec![0; RECV_BUF] }
    }

    /// A dump request (`NLM_F_DUMP`): every reply until `NLMSG_DONE`, taken
    /// again if the kernel says the list changed during the dump.
    pub(super) fn dump(&mut self, step: Step, msg: &RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, VethError> {
        for _ in 0..DUMP_ATTEMPTS {
            let (replies, interrupted) = self.exchange(step, msg, NLM_F_REQUEST | NLM_F_DUMP)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(VethError::Interrupted { netns: self.netns, step, attempts: DUMP_ATTEMPTS })
    }

    /// A single request: its one reply.
    pub(super) fn get(&mut self, step: Step, msg: &RouteNetlinkMessage) -> Result<RouteNetlinkMessage, VethError> {
        let (mut replies, _) = self.exchange(step, msg, NLM_F_REQUEST)?;
        match replies.len() {
            1 => Ok(replies.remove(0)),
            n => Err(self.malformed(step, format!("{n} replies to a single request"))),
        }
    }

    /// The socket, for the link watch's options and membership.
    pub(super) fn socket_mut(&mut self) -> &mut Socket {
        &mut self.sock
    }

    /// The first `len` bytes `recv` read.
    pub(super) fn received(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.buf.len())]
    }

    pub(super) fn malformed(&self, step: Step, detail: String) -> VethError {
        VethError::Malformed { netns: self.netns, step, detail }
    }

    /// Sends `msg` and collects the replies that carry its sequence number,
    /// until `NLMSG_DONE`, an `NLMSG_ERROR`, or a reply that is not part of
    /// a multi-part answer. Also says whether any reply had
    /// `NLM_F_DUMP_INTR`.
    fn exchange(
        &mut self,
        step: Step,
        msg: &RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), VethError> {
        let netns = self.netns;
        let io_err = |source| VethError::Io { netns, step, source };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg.clone()));
        req.finalize();
        // `serialize` panics on a short buffer: this one is exactly as long
        // as the message says it needs.
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0).map_err(io_err)?;

        let mut collect = Collect::default();
        while !collect.done {
            let len = self.recv().map_err(io_err)?;
            collect.absorb(&self.buf[..len], seq).map_err(|fault| match fault {
                Fault::Kernel(errno) => VethError::Kernel { netns, step, errno },
                Fault::Malformed(detail) => VethError::Malformed { netns, step, detail },
            })?;
        }
        Ok((collect.replies, collect.interrupted))
    }

    /// Reads one whole datagram into `self.buf`, growing it first if the
    /// datagram is larger (one device with many VFs can fill more than
    /// 32 KiB). Returns its length.
    pub(super) fn recv(&mut self) -> io::Result<usize> {
        loop {
            // MSG_TRUNC: the datagram's real length, whatever the buffer's
            // (none here: nothing is copied to peek).
            let len = match self.sock.recv(&mut &mut self.buf[..0], libc::MSG_PEEK | libc::MSG_TRUNC) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no reply within {RECV_TIMEOUT:?}")));
                }
                r => r?,
            };
            if len > self.buf.len() {
                self.buf.resize(len, 0);
            }
            let got = match self.sock.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if got > self.buf.len() {
                return Err(io::Error::other(format!("datagram of {got} bytes truncated to {}", self.buf.len())));
            }
            return Ok(got);
        }
    }
}

fn new_socket() -> io::Result<Socket> {
    let sock = Socket::new(NETLINK_ROUTE)?;
    setsockopt(&sock, ReceiveTimeout, &TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0))?;
    Ok(sock)
}

/// The fd number the kernel reads `NETNSA_FD` as: it resolves it in the
/// sending process's fd table (`get_net_ns_by_fd` in net/core/net_namespace.c).
pub(super) fn fd_attr(fd: BorrowedFd<'_>) -> u32 {
    // A valid fd is never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Splits a datagram into its netlink messages (`nlmsghdr` included), each
/// checked to lie within the datagram; a message that does not ends the
/// walk with an error. Messages are 4-byte aligned (NLMSG_ALIGN).
pub(super) fn frames(datagram: &[u8]) -> Frames<'_> {
    Frames { rest: datagram }
}

pub(super) struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let Some(len) = rest.first_chunk::<4>().map(|b| u32::from_ne_bytes(*b) as usize) else {
            return Some(Err(format!("{} trailing bytes, shorter than a netlink header", rest.len())));
        };
        if len < HEADER_LEN || len > rest.len() {
            return Some(Err(format!("message length {len} with {} bytes left in the datagram", rest.len())));
        }
        let aligned = len.next_multiple_of(4).min(rest.len());
        self.rest = &rest[aligned..];
        Some(Ok(&rest[..len]))
    }
}

/// The replies to one request so far.
#[derive(Debug, Default)]
pub(super) struct Collect {
    pub replies: Vec<RouteNetlinkMessage>,
    /// A reply had `NLM_F_DUMP_INTR`.
    pub interrupted: bool,
    /// The answer is complete.
    pub done: bool,
}

/// Why an answer failed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// `NLMSG_ERROR` (or a failed dump's `NLMSG_DONE`) with this errno.
    Kernel(i32),
    Malformed(String),
}

impl Collect {
    /// Takes in one datagram's messages that carry sequence number `seq`,
    /// until `NLMSG_DONE`, an `NLMSG_ERROR`, or a reply that is not part of
    /// a multi-part answer (`done`). Others (left over from an earlier
    /// request that failed half-way) are skipped.
    pub(super) fn absorb(&mut self, datagram: &[u8], seq: u32) -> Result<(), Fault> {
        for frame in frames(datagram) {
            // Whatever follows the end of the answer in its datagram is not
            // part of it.
            if self.done {
                break;
            }
            let frame = frame.map_err(Fault::Malformed)?;
            if frame_seq(frame) != seq {
                continue;
            }
            let parsed = parse_frame(frame).map_err(Fault::Malformed)?;
            self.interrupted |= parsed.header.flags & NLM_F_DUMP_INTR != 0;
            let multi = parsed.header.flags & NLM_F_MULTIPART != 0;
            match parsed.payload {
                // A dump that failed part-way ends with a negative code.
                NetlinkPayload::Done(done) if done.code < 0 => return Err(Fault::Kernel(done.code.saturating_neg())),
                NetlinkPayload::Done(_) => self.done = true,
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => return Err(Fault::Kernel(code.get().saturating_abs())),
                    // An acknowledgement.
                    None => self.done = true,
                },
                NetlinkPayload::InnerMessage(m) => {
                    self.replies.push(m);
                    self.done = !multi;
                }
                NetlinkPayload::Overrun(_) => return Err(Fault::Malformed("NLMSG_OVERRUN".into())),
                // NLMSG_NOOP, and whatever a newer netlink-packet-core adds.
                _ => {}
            }
        }
        Ok(())
    }
}

/// One message `frames` returned. A link message this crate cannot parse
/// whole is read attribute by attribute (`link_lenient`) rather than lost.
pub(super) fn parse_frame(frame: &[u8]) -> Result<NetlinkMessage<RouteNetlinkMessage>, String> {
    NetlinkMessage::deserialize(frame).or_else(|e| lenient_link_frame(frame).ok_or_else(|| e.to_string()))
}

fn lenient_link_frame(frame: &[u8]) -> Option<NetlinkMessage<RouteNetlinkMessage>> {
    let buf = NetlinkBuffer::new_checked(frame).ok()?;
    let header = NetlinkHeader::parse(&buf).ok()?;
    let link = link_lenient(buf.payload())?;
    let inner = match header.message_type {
        libc::RTM_NEWLINK => RouteNetlinkMessage::NewLink(link),
        libc::RTM_DELLINK => RouteNetlinkMessage::DelLink(link),
        _ => return None,
    };
    Some(NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner)))
}

/// `nlmsg_seq` of a frame `frames` returned (at least a header long).
fn frame_seq(frame: &[u8]) -> u32 {
    frame.get(8..12).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes)
}
