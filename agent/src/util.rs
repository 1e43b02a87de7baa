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

/// `10MiB`, `512K`, `2000`: a size in bytes (K, M and G are powers of
/// 1024 with or without `B`/`iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 10MiB, 512K, 2000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (use K, M or G)")),
    };
    match n.checked_mul(mult) {
        Some(b) if b >= 256 => Ok(b),
        Some(_) => Err(format!("{s:?} is too small: a record is a few hundred bytes (256 at least)")),
        None => Err(format!("{s:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2000"), Ok(2000));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "ten", "10 TB", "-5", "100", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
