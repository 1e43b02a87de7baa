//! What the command of `portcullis exec` gets, set up in the child between
//! `fork` and `exec`: its cgroup (joined before it can open a socket: a
//! socket keeps the cgroup it was created in), a cgroup namespace rooted
//! there (it cannot move itself out: kernel/cgroup/cgroup.c
//! `cgroup_procs_write_permission` wants both cgroups inside the writer's
//! namespace, where the hierarchy is mounted with `nsdelegate`), the
//! cgroup hierarchy read-only in a mount namespace of its own (a uid-0
//! command owns cgroup.procs files even without capabilities, and could
//! otherwise write itself into another cgroup), the network namespace
//! asked for, and none of the capabilities that leave enforcement
//! (docs/THREAT-MODEL.md). Everything
//! is prepared before `fork`; `apply` only makes system calls, which is all
//! that is safe in a forked child of a threaded process.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use thiserror::Error;

/// Capabilities the command runs without (include/uapi/linux/capability.h),
/// unless `--keep-caps`: packet sockets and TUN devices are never seen by
/// cgroup hooks (CAP_NET_RAW, CAP_NET_ADMIN); namespaces, mounts, BPF,
/// tracing and kernel modules reach around them (CAP_SYS_ADMIN, CAP_BPF,
/// CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_SYS_RAWIO); CAP_SETPCAP
/// would give them back. Dropped from the bounding set, so no `execve`
/// (setuid-root or file capabilities included) regains them.
pub const DROPPED_CAPS: [(u32, &str); 9] = [
    (13, "CAP_NET_RAW"),
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (19, "CAP_SYS_PTRACE"),
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    // Last: dropping the others from the bounding set needs it.
    (8, "CAP_SETPCAP"),
];

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("opening network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("looking up user {user:?}: {source}")]
    User { user: String, source: nix::Error },
    #[error("a path with a NUL byte: {0}")]
    Nul(String),
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
}

/// The child's set-up, prepared in the parent.
pub struct Sandbox {
    /// `cgroup.procs` of the command's cgroup, open for writing.
    procs: RawFd,
    netns: Option<OwnedFd>,
    /// (source, target) bind mounts: /etc/netns/<name>/<file> over /etc/<file>.
    etc_binds: Vec<(CString, CString)>,
    /// Mount points of the cgroup v2 hierarchy, made read-only for the
    /// command (unless `keep_caps`).
    cgroup_mounts: Vec<CString>,
    /// (uid, gid, supplementary groups).
    user: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    keep_caps: bool,
}

impl Sandbox {
    pub fn new(procs: RawFd, netns: Option<&Path>, user: Option<&str>, keep_caps: bool) -> Result<Self, SandboxError> {
        let (netns, etc_binds) = match netns {
            Some(p) => {
                let fd = fs::File::open(p).map_err(|source| SandboxError::Netns { path: p.display().to_string(), source })?;
                (Some(OwnedFd::from(fd)), etc_binds(p)?)
            }
            None => (None, Vec::new()),
        };
        let user = user.map(resolve_user).transpose()?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(SandboxError::Mountinfo)?;
        let cgroup_mounts = crate::cgroup::cgroup2_mounts_in(&mountinfo)
            .map(|p| CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::Nul(p.display().to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Self { procs, netns, etc_binds, cgroup_mounts, user, keep_caps })
    }

    /// Runs in the child, after `fork`, before `exec`: system calls only.
    pub fn apply(&self) -> io::Result<()> {
        let zero = b"0";
        // SAFETY (whole function): plain system calls on values prepared
        // before fork; no allocation, no locks.
        check(unsafe { libc::write(self.procs, zero.as_ptr().cast(), 1) } as i32)?;
        check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })?;
        if let Some(ns) = &self.netns {
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        }
        let read_only_cgroups = !self.keep_caps && !self.cgroup_mounts.is_empty();
        if !self.etc_binds.is_empty() || read_only_cgroups {
            // Mounts of its own, which nothing done here propagates back.
            check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            let root = c"/";
            let none = std::ptr::null::<libc::c_char>();
            check(unsafe { libc::mount(none, root.as_ptr(), none, libc::MS_SLAVE | libc::MS_REC, std::ptr::null()) })?;
            for (src, dst) in &self.etc_binds {
                check(unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND, std::ptr::null()) })?;
            }
            if read_only_cgroups {
                // Without CAP_SYS_ADMIN it cannot be made writable again.
                let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                for m in &self.cgroup_mounts {
                    check(unsafe { libc::mount(none, m.as_ptr(), none, flags, std::ptr::null()) })?;
                }
            }
        }
        // If the agent dies, its command goes too (daemons it started stay
        // in the cgroup, which stays enforced: `datapath::attach`).
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) })?;
        if !self.keep_caps {
            drop_caps()?;
        }
        if let Some((uid, gid, groups)) = &self.user {
            check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
            check(unsafe { libc::setgid(*gid) })?;
            check(unsafe { libc::setuid(*uid) })?;
        }
        if !self.keep_caps {
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        }
        let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&raw mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
        }
        // No descriptor of the agent's (sockets included: a socket keeps
        // the cgroup it was made in) reaches the command; 0-2 are its own.
        close_from_3();
        Ok(())
    }
}

fn check(rc: i32) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Drops `DROPPED_CAPS` from the bounding, ambient, inheritable, permitted
/// and effective sets.
fn drop_caps() -> io::Result<()> {
    for (cap, _) in DROPPED_CAPS {
        // EINVAL: a capability this kernel does not know (CAP_BPF before
        // 5.8): nothing to drop.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::last_os_error());
        }
    }
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) })?;
    // struct __user_cap_header_struct, _LINUX_CAPABILITY_VERSION_3, and two
    // __user_cap_data_struct (capabilities 0-31, 32-63).
    let mut header: [u32; 2] = [0x2008_0522, 0];
    let mut data = [[0u32; 3]; 2];
    check(unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } as i32)?;
    let mut mask = [0u32; 2];
    for (cap, _) in DROPPED_CAPS {
        mask[(cap / 32) as usize] |= 1 << (cap % 32);
    }
    for (words, m) in data.iter_mut().zip(mask) {
        for w in words.iter_mut() {
            *w &= !m;
        }
    }
    check(unsafe { libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) } as i32)
}

/// Marks every descriptor from 3 up close-on-exec (`close_range`, Linux
/// 5.11; before that one `fcntl` each up to the descriptor limit).
fn close_from_3() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3_u32, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(0, 1 << 20) as i32;
    for fd in 3..max {
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// `ip netns exec`'s files: for /run/netns/NAME, each /etc/netns/NAME/FILE
/// is bind-mounted over /etc/FILE (resolv.conf, hosts).
fn etc_binds(netns: &Path) -> Result<Vec<(CString, CString)>, SandboxError> {
    let Some(name) = netns.file_name() else { return Ok(Vec::new()) };
    let dir = Path::new("/etc/netns").join(name);
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let target = Path::new("/etc").join(e.file_name());
        if !target.exists() {
            continue;
        }
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::Nul(p.display().to_string()));
        out.push((c(&e.path())?, c(&target)?));
    }
    Ok(out)
}

/// A user name or uid -> (uid, primary gid, groups).
fn resolve_user(spec: &str) -> Result<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>), SandboxError> {
    use nix::unistd::{Uid, User, getgrouplist};
    let err = |source| SandboxError::User { user: spec.to_owned(), source };
    let user = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).map_err(err)?,
        Err(_) => User::from_name(spec).map_err(err)?,
    };
    let Some(user) = user else {
        // A bare uid with no passwd entry: itself, group = uid, no others.
        return match spec.parse::<u32>() {
            Ok(uid) => Ok((uid, uid, vec![uid])),
            Err(_) => Err(SandboxError::UnknownUser(spec.to_owned())),
        };
    };
    let name = CString::new(user.name.as_bytes()).map_err(|_| SandboxError::UnknownUser(spec.to_owned()))?;
    let groups = getgrouplist(&name, user.gid).map_err(err)?.into_iter().map(|g| g.as_raw()).collect();
    Ok((user.uid.as_raw(), user.gid.as_raw(), groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_name_and_uid() {
        let (uid, gid, groups) = resolve_user("root").unwrap();
        assert_eq!((uid, gid), (0, 0));
        assert!(groups.contains(&0));
        assert_eq!(resolve_user("0").unwrap().0, 0);
        // A uid without a passwd entry is itself.
        assert_eq!(resolve_user("4000000").unwrap(), (4_000_000, 4_000_000, vec![4_000_000]));
        assert!(matches!(resolve_user("no-such-user-portcullis"), Err(SandboxError::UnknownUser(_))));
    }

    #[test]
    fn setpcap_goes_last() {
        assert_eq!(DROPPED_CAPS.last().unwrap().1, "CAP_SETPCAP");
    }
}
