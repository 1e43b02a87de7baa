//! Counting the entries of a running agent's kernel maps, by map id, with
//! raw bpf(2) (no pins needed): the maps are found from the programs
//! attached to a cgroup (`bpftool`), then walked with
//! `BPF_MAP_GET_NEXT_KEY`. Used by the soak (`crate::soak`).

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> libc::c_long {
    // SAFETY: attr is a zeroed bpf_attr-sized buffer that outlives the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output().context("run bpftool")?;
    if !out.status.success() {
        bail!("bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Array(vec![]));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {args:?} output"))
}

/// One kernel map, opened by id.
#[derive(Debug)]
pub struct KernelMap {
    pub name: String,
    pub id: u64,
    pub max_entries: u64,
    key_size: usize,
    value_size: usize,
    fd: OwnedFd,
}

impl KernelMap {
    fn open(id: u64, name: String, (key_size, value_size): (usize, usize), max_entries: u64) -> Result<Self> {
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&(id as u32).to_ne_bytes());
        let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr);
        if fd < 0 {
            bail!("map {name} (id {id}): {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor the kernel just handed us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { name, id, max_entries, key_size, value_size, fd })
    }

    /// Every key, each once (a walk restarts at the first key when the
    /// current one is deleted under it; duplicates are dropped).
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut seen = HashSet::new();
        let mut cur: Option<Vec<u8>> = None;
        let mut next = vec![0u8; self.key_size];
        for _ in 0..(self.max_entries * 3 + 1024) {
            let mut attr = [0u8; 128];
            attr[..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
            let key_ptr = cur.as_ref().map_or(0, |k| k.as_ptr() as u64);
            attr[8..16].copy_from_slice(&key_ptr.to_ne_bytes());
            attr[16..24].copy_from_slice(&(next.as_mut_ptr() as u64).to_ne_bytes());
            if bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) != 0 {
                break; // ENOENT: the last key
            }
            seen.insert(next.clone());
            cur = Some(next.clone());
        }
        seen.into_iter().collect()
    }

    pub fn count(&self) -> usize {
        self.keys().len()
    }

    /// The kernel's `memlock` of the map (fdinfo). For a hash map without
    /// preallocation it grows by exactly `self.elem_bytes()` per element
    /// (kernel/bpf/hashtab.c `htab_map_mem_usage`, from the element counter:
    /// an exact count, unlike a walk, which runs while the map changes).
    pub fn memlock(&self) -> u64 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd())).unwrap_or_default();
        info.lines().find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok()).unwrap_or(0)
    }

    /// Bytes `memlock` counts per element of a hash map: the key and value
    /// rounded up to 8, `struct htab_elem` and the free-list node.
    pub fn elem_bytes(&self) -> u64 {
        (self.key_size.div_ceil(8) * 8 + self.value_size.div_ceil(8) * 8 + 56) as u64
    }

    /// The exact number of elements, given `memlock` when it was empty.
    pub fn len_since(&self, empty_memlock: u64) -> usize {
        (self.memlock().saturating_sub(empty_memlock) / self.elem_bytes()) as usize
    }

    /// Keys per value of their first 4 bytes (native endian): per
    /// endpoint, for maps keyed by endpoint first (`LEARNED`).
    pub fn count_by_u32_prefix(&self) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for k in self.keys() {
            let ep = k.get(..4).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap_or_default()));
            *out.entry(ep).or_default() += 1;
        }
        out
    }
}

/// The maps used by the programs attached to `cgroup`, by name.
pub fn maps_of_cgroup(cgroup: &Path) -> Result<HashMap<String, KernelMap>> {
    let progs = bpftool(&["cgroup", "show", &cgroup.to_string_lossy()])?;
    let mut ids = HashSet::new();
    for p in progs.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().context("prog id")?.to_string();
        let info = bpftool(&["prog", "show", "id", &id])?;
        ids.extend(info["map_ids"].as_array().into_iter().flatten().filter_map(Value::as_u64));
    }
    let mut out = HashMap::new();
    for id in ids {
        let m = bpftool(&["map", "show", "id", &id.to_string()])?;
        let name = m["name"].as_str().unwrap_or_default().to_owned();
        let size = |f: &str| m[f].as_u64().unwrap_or(0) as usize;
        if size("bytes_key") > 0 && !name.starts_with('.') {
            let max = m["max_entries"].as_u64().unwrap_or(0);
            out.insert(name.clone(), KernelMap::open(id, name, (size("bytes_key"), size("bytes_value")), max)?);
        }
    }
    if out.is_empty() {
        bail!("no maps attached at {}", cgroup.display());
    }
    Ok(out)
}

/// The resident memory of `pid` by kind of mapping, in KiB, from
/// `/proc/<pid>/smaps`: the main malloc arena (`[heap]`), anonymous
/// mappings at a 64 MiB boundary (glibc's per-thread arenas), other anonymous mappings (thread stacks, large allocations) and
/// files (the binary, libraries).
pub fn rss_by_kind(pid: u32) -> [(&'static str, u64); 4] {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out = [("heap", 0), ("arenas", 0), ("anon", 0), ("file", 0)];
    let mut kind = 3;
    for l in text.lines() {
        let mut w = l.split_whitespace();
        let first = w.next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            let path = w.nth(4).unwrap_or("");
            kind = match path {
                "[heap]" => 0,
                // glibc aligns each thread arena's heap to its 64 MiB size.
                "" if lo.is_multiple_of(64 << 20) && hi > lo => 1,
                "" => 2,
                p if p.starts_with('[') => 2,
                _ => 3,
            };
        } else if first == "Rss:" {
            out[kind].1 += w.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    out
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`) or a count
/// (`Threads`).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
