//! Which learned addresses have live connections, so that the caps
//! (`state::learned`) never evict one: an endpoint keeps reaching, also with
//! new connections, an address it is talking to.
//!
//! Socket storage (`SK_FLOWS`) cannot be listed from user space, so this
//! asks the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, `inet_diag`,
//! net/ipv4/inet_diag.c): a dump of the TCP sockets that are connecting or
//! connected and of the connected UDP sockets, IPv4 and IPv6, in every
//! network namespace where a DNS gate was opened (a netlink socket belongs to
//! the namespace it was made in, so the gate's thread makes one there). Each
//! socket is credited to the endpoint whose cgroup holds it, itself or below
//! (`INET_DIAG_CGROUP_ID`, Linux 5.9). Dumped only when a cap must evict.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use crate::{
    cgroup::{self, dirs_below},
    policy::canonical,
    util::lock,
};

/// Live connections: endpoint -> destination addresses (the maps' key
/// form: IPv6, or IPv4-mapped IPv6).
pub type LiveIps = HashMap<u32, HashSet<[u8; 16]>>;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_CGROUP_ID: u16 = 21;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg` (uapi linux/inet_diag.h).
const DIAG_MSG_LEN: usize = 72;

/// TCP states that make a connection live: `SYN_SENT`, `ESTABLISHED`,
/// `FIN_WAIT1/2`, `CLOSE_WAIT`, `LAST_ACK`, `CLOSING` (not `TIME_WAIT`,
/// `CLOSE`, `LISTEN`; `SYN_RECV` are inbound request sockets).
const TCP_LIVE_STATES: u32 = 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;
/// A connected UDP socket is `TCP_ESTABLISHED`.
const UDP_LIVE_STATES: u32 = 1 << 1;
/// A dump is answered at once; never wait long (the caller holds the
/// agent's state lock).
const DUMP_TIMEOUT: Duration = Duration::from_secs(1);

/// The namespaces to ask and the endpoints' cgroups.
#[derive(Default)]
pub struct LiveConns {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// netns cookie -> a `NETLINK_SOCK_DIAG` socket made in it.
    namespaces: HashMap<u64, OwnedFd>,
    /// An endpoint's cgroup id -> its directory.
    cgroups: HashMap<u64, PathBuf>,
}

impl LiveConns {
    /// Adds a namespace (`diag` made inside it); a known one keeps its socket.
    pub fn add_namespace(&self, netns_cookie: u64, diag: OwnedFd) {
        lock(&self.inner).namespaces.entry(netns_cookie).or_insert(diag);
    }

    /// Notes where an endpoint's cgroup is (sockets are credited by cgroup).
    pub fn watch_cgroup(&self, cgroup_id: u64, dir: &Path) {
        lock(&self.inner).cgroups.insert(cgroup_id, dir.to_path_buf());
    }

    pub fn unwatch_cgroup(&self, cgroup_id: u64) {
        lock(&self.inner).cgroups.remove(&cgroup_id);
    }

    /// Destination addresses (canonical form) of live connections, per
    /// endpoint, for `endpoints` as (endpoint id, cgroup id). A namespace
    /// that cannot be asked counts nothing (the caps then evict as usual).
    pub fn live_ips(&self, endpoints: &[(u32, u64)]) -> LiveIps {
        let inner = lock(&self.inner);
        let mut owner: HashMap<u64, u32> = HashMap::new();
        for &(endpoint, cgroup_id) in endpoints {
            owner.insert(cgroup_id, endpoint);
            if let Some(dir) = inner.cgroups.get(&cgroup_id) {
                for id in dirs_below(dir, cgroup::MAX_WALK_DIRS).iter().filter_map(|d| cgroup::cgroup_id(d).ok()) {
                    owner.entry(id).or_insert(endpoint);
                }
            }
        }
        let mut live = LiveIps::new();
        for (netns, fd) in &inner.namespaces {
            for (family, proto, states) in [
                (libc::AF_INET, libc::IPPROTO_TCP, TCP_LIVE_STATES),
                (libc::AF_INET6, libc::IPPROTO_TCP, TCP_LIVE_STATES),
                (libc::AF_INET, libc::IPPROTO_UDP, UDP_LIVE_STATES),
                (libc::AF_INET6, libc::IPPROTO_UDP, UDP_LIVE_STATES),
            ] {
                let sockets = match dump(fd, family as u8, proto as u8, states) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, netns, "socket diagnostics failed");
                        continue;
                    }
                };
                for (dst, cgroup_id) in sockets {
                    if let Some(ep) = owner.get(&cgroup_id) {
                        live.entry(*ep).or_default().insert(dst);
                    }
                }
            }
        }
        live
    }
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
pub fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval { tv_sec: DUMP_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One `inet_diag` dump: (destination in canonical form, cgroup id) of each
/// socket of `family`/`proto` in one of `states`.
fn dump(fd: &OwnedFd, family: u8, proto: u8, states: u32) -> io::Result<Vec<([u8; 16], u64)>> {
    let mut req = [0u8; NLMSG_HDRLEN + 56];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, id.
    req[16] = family;
    req[17] = proto;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: sending a fully initialised buffer on a valid fd.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, within its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 || parse(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram of netlink messages into `out`; true at the end of
/// the dump. Lengths are checked before every read.
fn parse(mut b: &[u8], out: &mut Vec<([u8; 16], u64)>) -> io::Result<bool> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or_else(|| bad("short header"))? as usize;
        let ty = u16_at(b, 4).ok_or_else(|| bad("short header"))?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(bad("message length"));
        }
        let msg = &b[NLMSG_HDRLEN..len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(msg, 0).ok_or_else(|| bad("short error"))? as i32;
                return if errno == 0 { Ok(true) } else { Err(io::Error::from_raw_os_error(-errno)) };
            }
            SOCK_DIAG_BY_FAMILY if msg.len() >= DIAG_MSG_LEN => {
                // inet_diag_msg: family, state, timer, retrans, then the
                // sockid: sport, dport, src[16], dst[16], ...
                let dst = &msg[24..40];
                let ip = if msg[0] == libc::AF_INET as u8 {
                    let v4: [u8; 4] = dst[..4].try_into().map_err(|_| bad("address"))?;
                    canonical(std::net::Ipv4Addr::from(v4).into()).octets()
                } else {
                    let v6: [u8; 16] = dst.try_into().map_err(|_| bad("address"))?;
                    v6
                };
                if let Some(cgroup) = cgroup_attr(&msg[DIAG_MSG_LEN..]) {
                    out.push((ip, cgroup));
                }
            }
            _ => {}
        }
        let next = len.next_multiple_of(4).min(b.len());
        b = &b[next..];
    }
    Ok(false)
}

/// `INET_DIAG_CGROUP_ID` among a message's attributes.
fn cgroup_attr(mut attrs: &[u8]) -> Option<u64> {
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0)?);
        let ty = u16_at(attrs, 2)?;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == INET_DIAG_CGROUP_ID && len >= 12 {
            return Some(u64::from_ne_bytes(attrs[4..12].try_into().ok()?));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(ty.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    fn diag(family: u8, dst: &[u8], cgroup: Option<u64>) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG_LEN];
        b[0] = family;
        b[24..24 + dst.len()].copy_from_slice(dst);
        if let Some(c) = cgroup {
            b.extend(12u16.to_ne_bytes());
            b.extend(INET_DIAG_CGROUP_ID.to_ne_bytes());
            b.extend(c.to_ne_bytes());
        }
        msg(SOCK_DIAG_BY_FAMILY, &b)
    }

    #[test]
    fn parses_sockets_with_their_cgroup_and_stops_at_done() {
        let mut data = diag(libc::AF_INET as u8, &[203, 0, 113, 10], Some(77));
        data.extend(diag(libc::AF_INET6 as u8, &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], Some(78)));
        // No cgroup attribute (an older kernel): not credited to anyone.
        data.extend(diag(libc::AF_INET as u8, &[192, 0, 2, 1], None));
        data.extend(msg(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse(&data, &mut out).unwrap());
        let v4 = canonical("203.0.113.10".parse().unwrap()).octets();
        assert_eq!(out[0], (v4, 77));
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let mut data = diag(libc::AF_INET as u8, &[203, 0, 113, 10], Some(1));
        data[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse(&data, &mut Vec::new()).is_err());
        // Truncated and garbage inputs of every length end cleanly.
        let good = diag(libc::AF_INET6 as u8, &[1; 16], Some(5));
        for n in 0..good.len() {
            let _ = parse(&good[..n], &mut Vec::new());
            let _ = cgroup_attr(&good[..n]);
        }
        assert_eq!(cgroup_attr(&[0xff, 0xff, 21, 0]), None);
    }

    #[test]
    fn an_error_message_carries_the_errno() {
        let data = msg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let e = parse(&data, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    }
}
