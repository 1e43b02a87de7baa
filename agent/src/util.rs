//! Small helpers every part of the agent uses.

use std::sync::{Mutex, MutexGuard};

/// Locks, recovering from a poisoned lock: a panic elsewhere must not stop
/// enforcement bookkeeping or the blocked log (the data stays consistent:
/// every writer finishes its map update before it could panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: the kernel's `bpf_ktime_get_boot_ns`,
/// which learned expiries and event times are in.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Runs `f` on a short-lived thread inside the network namespace `ns`
/// (never the caller's thread: its namespace stays as it is). Sockets and
/// netlink requests made there belong to that namespace.
pub fn in_netns<T: Send>(ns: std::os::fd::BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn_scoped(s, move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(f())
            })?
            .join()
            .map_err(|_| std::io::Error::other("netns worker panicked"))?
    })
}
