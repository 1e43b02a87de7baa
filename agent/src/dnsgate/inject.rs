//! Re-injection of held DNS answers into the workload's network namespace.
//!
//! The answer was dropped in `cgroup_skb/ingress` of the workload's socket.
//! After learning, the agent sends the (checksum-fixed) packet again from a
//! raw socket that lives *in the workload's namespace*: its destination is a
//! local address there, so the kernel loops it back and delivers it to the
//! waiting socket (ip_local_out -> loopback -> ip_rcv; the route is already
//! attached, so no rp_filter applies). The socket's `SO_MARK` lets the
//! ingress program recognise and pass it. This works whatever namespace the
//! workload is in, veth-only pods included, with no agent address anywhere.
//!
//! Raw sockets are created per namespace by a short-lived thread that
//! `setns`es into `/proc/<tgid>/ns/net` (a socket stays in the namespace it
//! was created in) and cached by namespace cookie, verified with
//! `SO_NETNS_COOKIE` so a recycled PID can never redirect an answer.

use std::{
    collections::HashMap,
    fs::File,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
};

use nix::{
    sched::{CloneFlags, setns},
    sys::socket::{MsgFlags, SockaddrIn, SockaddrIn6, sendto},
};
use thiserror::Error;

use crate::datapath::loader::netns_cookie_of;

#[derive(Debug, Error)]
pub enum InjectError {
    #[error("opening network namespace of pid {tgid}: {source}")]
    OpenNetns { tgid: u32, source: std::io::Error },
    #[error("entering network namespace of pid {tgid}: {source}")]
    Setns { tgid: u32, source: nix::Error },
    #[error("creating raw socket: {0}")]
    Socket(std::io::Error),
    #[error("namespace of pid {tgid} has cookie {found}, the answer was for {expected} (pid reused?)")]
    CookieMismatch { tgid: u32, found: u64, expected: u64 },
    #[error("sending answer: {0}")]
    Send(nix::Error),
    #[error("injector thread panicked")]
    Thread,
}

struct NsSockets {
    v4: OwnedFd,
    v6: OwnedFd,
}

/// Raw sockets per network namespace, keyed by namespace cookie.
pub struct Injector {
    mark: u32,
    sockets: HashMap<u64, NsSockets>,
}

pub(crate) fn raw_socket(family: libc::c_int, mark: u32) -> Result<OwnedFd, InjectError> {
    // IPPROTO_RAW implies IP_HDRINCL (IPv4) / IPV6_HDRINCL (IPv6, Linux 4.5).
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(InjectError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(&fd, libc::SO_MARK, mark as libc::c_int).map_err(InjectError::Socket)?;
    Ok(fd)
}

/// `setsockopt(SOL_SOCKET, name, value)` for an integer option.
pub(crate) fn set_int_option(fd: &OwnedFd, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a valid socket and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn open_in_netns(tgid: u32, mark: u32) -> Result<(NsSockets, u64), InjectError> {
    let ns = File::open(format!("/proc/{tgid}/ns/net")).map_err(|source| InjectError::OpenNetns { tgid, source })?;
    thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| InjectError::Setns { tgid, source })?;
        let v4 = raw_socket(libc::AF_INET, mark)?;
        let v6 = raw_socket(libc::AF_INET6, mark)?;
        let cookie = netns_cookie_of(&v4).map_err(InjectError::Socket)?;
        Ok((NsSockets { v4, v6 }, cookie))
    })
    .join()
    .map_err(|_| InjectError::Thread)?
}

impl Injector {
    pub fn new(mark: u32) -> Self {
        Self { mark, sockets: HashMap::new() }
    }

    /// Sends `packet` (a complete IP packet to `dst`) inside the namespace
    /// identified by `netns_cookie`, found through process `tgid` if new.
    pub fn send(&mut self, netns_cookie: u64, tgid: u32, dst: IpAddr, packet: &[u8]) -> Result<(), InjectError> {
        if !self.sockets.contains_key(&netns_cookie) {
            let (socks, found) = open_in_netns(tgid, self.mark)?;
            if found != netns_cookie {
                return Err(InjectError::CookieMismatch { tgid, found, expected: netns_cookie });
            }
            self.sockets.insert(netns_cookie, socks);
        }
        let socks = &self.sockets[&netns_cookie];
        let sent = match dst {
            IpAddr::V4(ip) => {
                sendto(socks.v4.as_raw_fd(), packet, &SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0)), MsgFlags::empty())
            }
            IpAddr::V6(ip) => sendto(
                socks.v6.as_raw_fd(),
                packet,
                &SockaddrIn6::from(std::net::SocketAddrV6::new(ip, 0, 0, 0)),
                MsgFlags::empty(),
            ),
        };
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                // The namespace may be gone; reopen next time.
                self.sockets.remove(&netns_cookie);
                Err(InjectError::Send(e))
            }
        }
    }

    /// Forgets namespaces (e.g. when an endpoint goes away).
    pub fn clear(&mut self) {
        self.sockets.clear();
    }
}
