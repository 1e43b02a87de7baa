//! Minimal rtnetlink requests (tc filters and qdiscs, policy routes):
//! built by hand, sent on a `NETLINK_ROUTE` socket of the calling thread's
//! namespace, acknowledged or refused with the kernel's errno.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// One netlink request being built: header, family header, attributes.
pub(crate) struct Msg(Vec<u8>);

impl Msg {
    pub(crate) fn new(kind: u16, flags: u16, family_header: &[u8]) -> Self {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(family_header);
        Self(b)
    }

    pub(crate) fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
    }

    pub(crate) fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    pub(crate) fn end_nested(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// A `NETLINK_ROUTE` socket of the calling thread's namespace.
pub(crate) struct Netlink(OwnedFd);

impl Netlink {
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one request and waits for its acknowledgement.
    pub(crate) fn call(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a valid buffer of its length; the kernel is the peer (nl_pid 0).
        let sent = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: writes at most buf.len() bytes.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let reply = &buf[..n as usize];
            if reply.len() < 20 {
                return Err(io::Error::other("short netlink reply"));
            }
            let kind = u16::from_ne_bytes([reply[4], reply[5]]);
            if kind == libc::NLMSG_ERROR as u16 {
                let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
                return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
            }
        }
    }
}
