//! What an agent run leaves in the kernel and the file systems: cgroups,
//! BPF programs and maps, pins; and a cgroup owned by a test.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::SEQ;

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo")
}

/// `portcullis-exec-*` cgroups directly under the cgroup2 mount.
pub fn exec_cgroups() -> BTreeSet<String> {
    std::fs::read_dir(cgroup2_mount())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("portcullis-exec-"))
        .collect()
}

/// The cgroup `portcullis exec` with this PID creates.
pub fn exec_cgroup_of(pid: u32) -> PathBuf {
    cgroup2_mount().join(format!("portcullis-exec-{pid}"))
}

/// Ids of loaded BPF programs named `pc_*` (bpftool prog show -j).
pub fn pc_prog_ids() -> BTreeSet<u64> {
    let out = Command::new("bpftool").args(["prog", "show", "-j"]).output().expect("run bpftool");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let progs: Value = serde_json::from_slice(&out.stdout).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("pc_")))
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// Anything pinned under /sys/fs/bpf named `pc_*` or `portcullis*`.
pub fn pinned_leftovers() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pc_") || name.starts_with("portcullis") {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = vec![];
    walk(Path::new("/sys/fs/bpf"), &mut out);
    out
}

/// A cgroup a test created under the cgroup2 mount; on drop, whatever is
/// left in it is killed (`cgroup.kill`) and the directory removed.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = cgroup2_mount().join(format!("pc-test-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kills every process in the subtree, then removes the directories
        // deepest first (a cgroup with children cannot be removed).
        fn remove(dir: &Path) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path());
                    }
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = std::fs::remove_dir(dir) {
                if Instant::now() > deadline {
                    eprintln!("TestCgroup: cannot remove {}: {e}", dir.display());
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        remove(&self.path);
    }
}

pub fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool").args(args).arg("-j").output().expect("run bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    // `bpftool cgroup show` prints nothing at all when nothing is attached.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(vec![]);
    }
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn ids(v: &Value) -> BTreeSet<u64> {
    v.as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

/// What an agent run attached to its cgroup: program ids and names, and the
/// ids of every map those programs use.
#[derive(Debug)]
pub struct Attached {
    pub cgroup: PathBuf,
    pub progs: Vec<(u64, String, String)>,
    pub maps: BTreeSet<u64>,
    /// `maps` but those of one load only (global data, its own verdict
    /// cache): the maps every load shares (pinned in node mode).
    pub shared_maps: BTreeSet<u64>,
    /// Each program's name and its maps.
    pub prog_maps: Vec<(String, BTreeSet<u64>)>,
}

pub fn attached(cgroup: &Path) -> Attached {
    let list = bpftool_json(&["cgroup", "show", cgroup.to_str().unwrap()]);
    let mut progs = vec![];
    let mut maps = BTreeSet::new();
    let mut prog_maps = vec![];
    for p in list.as_array().unwrap() {
        let id = p["id"].as_u64().unwrap();
        let name = p["name"].as_str().unwrap_or("").to_owned();
        progs.push((id, name.clone(), p["attach_type"].as_str().unwrap_or("").to_owned()));
        let info = bpftool_json(&["prog", "show", "id", &id.to_string()]);
        let used: BTreeSet<u64> = info["map_ids"].as_array().into_iter().flatten().map(|m| m.as_u64().unwrap()).collect();
        maps.extend(used.iter().copied());
        prog_maps.push((name, used));
    }
    progs.sort();
    // Maps of one load only: its global data and its own verdict cache.
    let shared_maps = maps
        .iter()
        .copied()
        .filter(|id| {
            let name = bpftool_json(&["map", "show", "id", &id.to_string()])["name"].as_str().unwrap_or("").to_owned();
            name != "SOLO_CACHE" && ![".rodata", ".data", ".bss"].iter().any(|s| name.contains(s))
        })
        .collect();
    Attached { cgroup: cgroup.to_owned(), progs, maps, shared_maps, prog_maps }
}

impl Attached {
    /// Whether the program `name` attached here uses the map `map`.
    pub fn prog_uses(&self, name: &str, map: u64) -> bool {
        self.prog_maps.iter().any(|(n, m)| n == name && m.contains(&map))
    }

    /// The eleven programs, one per hook.
    pub fn expect_all_hooks(&self) {
        let mut got: Vec<(&str, &str)> = self.progs.iter().map(|(_, n, t)| (n.as_str(), t.as_str())).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("pc_connect4", "cgroup_inet4_connect"),
                ("pc_connect6", "cgroup_inet6_connect"),
                ("pc_egress", "cgroup_inet_egress"),
                ("pc_ingress", "cgroup_inet_ingress"),
                ("pc_recvmsg4", "cgroup_udp4_recvmsg"),
                ("pc_recvmsg6", "cgroup_udp6_recvmsg"),
                ("pc_release", "cgroup_inet_sock_release"),
                ("pc_sendmsg4", "cgroup_udp4_sendmsg"),
                ("pc_sendmsg6", "cgroup_udp6_sendmsg"),
                ("pc_setsockopt", "cgroup_setsockopt"),
                ("pc_sock_create", "cgroup_inet_sock_create"),
            ],
            "{self:?}"
        );
        assert!(self.maps.len() >= 5, "{self:?}");
    }

    /// Cgroup, programs, maps and pins are all gone.
    pub fn expect_gone(&self) {
        assert!(!self.cgroup.exists(), "{} left", self.cgroup.display());
        self.expect_detached();
    }

    /// Programs, maps and pins are gone (the cgroup may stay: not ours).
    pub fn expect_detached(&self) {
        if self.cgroup.exists() {
            let still = bpftool_json(&["cgroup", "show", self.cgroup.to_str().unwrap()]);
            assert_eq!(still, serde_json::json!([]), "still attached");
        }
        // The kernel frees programs after an RCU grace period and their maps
        // after that, from a work queue: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let progs = ids(&bpftool_json(&["prog", "show"]));
            let maps = ids(&bpftool_json(&["map", "show"]));
            let left_progs: Vec<_> = self.progs.iter().filter(|(id, _, _)| progs.contains(id)).collect();
            let left_maps: Vec<_> = self.maps.intersection(&maps).collect();
            if left_progs.is_empty() && left_maps.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "programs left: {left_progs:?}, maps left: {left_maps:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pinned_leftovers(), Vec::<PathBuf>::new(), "pinned under /sys/fs/bpf");
    }
}

/// Waits until `f` returns `Some`, polling every 10 ms, or panics.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
