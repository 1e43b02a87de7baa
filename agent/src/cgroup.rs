//! cgroup v2 helpers: find the hierarchy, create an endpoint cgroup that is
//! removed on drop (also on panic), move a process into it.
//!
//! On hybrid systems v2 is mounted at `/sys/fs/cgroup/unified`, elsewhere at
//! `/sys/fs/cgroup`: never hard-code it, read `/proc/self/mountinfo`.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked for fstype cgroup2 in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup(PathBuf),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io { op, path: path.to_owned(), source }
}

/// Mount point of the cgroup v2 hierarchy, from a mountinfo text.
pub fn find_cgroup2_in(mountinfo: &str) -> Option<PathBuf> {
    cgroup2_mounts_in(mountinfo).next()
}

/// Every mount point of the cgroup v2 hierarchy (it may be mounted more
/// than once), from a mountinfo text.
pub fn cgroup2_mounts_in(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <src> <opts>"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(unescape))?
    })
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            let oct: String = it.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let p = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(p).map_err(io("reading", p))?;
    find_cgroup2_in(&text).ok_or(CgroupError::NoCgroup2)
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the
/// inode number of the cgroup's directory in cgroupfs (kernfs node id).
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    if !path.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup(path.to_owned()));
    }
    Ok(fs::metadata(path).map_err(io("stat", path))?.ino())
}

/// PIDs currently in a cgroup.
pub fn procs(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// A cgroup this process created; on drop every process left in it is
/// killed (`cgroup.kill`, Linux 5.14) and the directory removed.
pub struct OwnedCgroup {
    path: PathBuf,
    id: u64,
}

impl OwnedCgroup {
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io("creating cgroup", &path))?;
        let id = match cgroup_id(&path) {
            Ok(id) => id,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(e);
            }
        };
        Ok(Self { path, id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Kills what is left in the cgroup and removes it; idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        // Leftover daemons of the exec'd command must not outlive it
        // unenforced: once we detach, they would be free.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(CgroupError::Io { op: "removing cgroup", path: self.path.clone(), source: e }),
            }
        }
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "cgroup cleanup failed");
        }
    }
}

/// How deep below a cgroup the walks go...
const MAX_WALK_DEPTH: usize = 16;
/// ...and how many cgroups they visit at most.
pub const MAX_WALK_DIRS: usize = 4096;

/// `dir` and the directories (cgroups) below it, depth first, at most
/// `MAX_WALK_DEPTH` levels down and `max` in all.
pub fn dirs_below(dir: &Path, max: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        if out.len() >= max {
            break;
        }
        if depth < MAX_WALK_DEPTH {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push((e.path(), depth + 1));
                }
            }
        }
        out.push(d);
    }
    out
}

/// Processes in `dir` and its descendant cgroups (a bounded walk), at most
/// one per network namespace is needed by callers, so the list is capped.
pub fn procs_below(dir: &Path) -> Vec<u32> {
    const MAX_PROCS: usize = 256;
    let mut out = Vec::new();
    for d in dirs_below(dir, MAX_WALK_DIRS) {
        if out.len() >= MAX_PROCS {
            break;
        }
        out.extend(procs(&d));
    }
    out.truncate(MAX_PROCS);
    out
}

/// What `sweep_stale` found: a dead owner's cgroup that still holds
/// processes (now unenforced: the owner's links went with it).
#[derive(Debug, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    pub procs: Vec<u32>,
}

/// Removes the cgroups `<prefix><pid>` under `parent` whose creator, process
/// `pid`, is gone: an owner killed by SIGKILL never ran its cleanup (its
/// programs, attached by links, were detached when it died). Only empty ones
/// go (rmdir fails on a cgroup with processes or children); the others are
/// returned, to be reported: whoever started them decides their fate.
pub fn sweep_stale(parent: &Path, prefix: &str) -> Vec<Leftover> {
    let mut left = Vec::new();
    for e in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if fs::remove_dir(e.path()).is_err() {
            left.push(Leftover { path: e.path(), procs: procs_below(&e.path()) });
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_only_dead_owners_empty_cgroups() {
        let dir = std::env::temp_dir().join(format!("pc-sweep-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // PIDs above the kernel's limit (PID_MAX_LIMIT, 2^22) never exist.
        let dead = 4_999_999u32;
        let me = std::process::id();
        for name in [format!("x-{dead}"), format!("x-{me}"), "x-notapid".into(), format!("y-{dead}"), format!("x-{}", dead - 1)] {
            fs::create_dir_all(dir.join(name)).unwrap();
        }
        // A non-empty one (here: a child directory) stays and is reported.
        fs::create_dir(dir.join(format!("x-{}", dead - 1)).join("child")).unwrap();
        let left = sweep_stale(&dir, "x-");
        let mut names: Vec<String> =
            fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let mut want = [format!("x-{}", dead - 1), format!("x-{me}"), "x-notapid".into(), format!("y-{dead}")];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].path, dir.join(format!("x-{}", dead - 1)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn walks_below_within_depth_and_count() {
        let dir = std::env::temp_dir().join(format!("pc-walk-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let deep: PathBuf = (0..MAX_WALK_DEPTH + 3).map(|i| format!("d{i}")).collect();
        fs::create_dir_all(dir.join(&deep)).unwrap();
        fs::create_dir_all(dir.join("side")).unwrap();
        let all = dirs_below(&dir, usize::MAX);
        // The root, `side`, and MAX_WALK_DEPTH levels of the deep chain.
        assert_eq!(all.len(), 2 + MAX_WALK_DEPTH, "{all:?}");
        assert_eq!(all[0], dir);
        assert_eq!(dirs_below(&dir, 3).len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
                      35 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_cgroup2_in("22 1 0:5 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn unescapes_octal() {
        let info = "35 25 0:31 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_in(info), Some(PathBuf::from("/mnt/my cg")));
    }
}
