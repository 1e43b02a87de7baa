//! Pinning in bpffs, so enforcement outlives the agent process (node mode).
//!
//! Layout under the configured pin path:
//!
//! ```text
//! <pin path>/maps/<MAP NAME>@<version>    every map of the object
//! <pin path>/links/<cgroup id>-<prog>     one cgroup bpf_link per program
//! <pin path>/links/<cgroup id>-SOLO_CACHE@<version>  an attach point's own cache
//! ```
//!
//! Each map carries its own version (`programs::MAPS`), bumped when its
//! key, value or type changes: a new agent adopts every pinned map whose
//! version it shares, creates the others, and removes pins of versions it
//! does not use only once its programs replaced the old ones (`retire_old`).
//! Links have no layout: a link is a kernel object holding a program.
//!
//! A pinned link keeps its program attached while no process holds it, and
//! the program keeps the maps. A new agent loads its own programs against
//! the pinned maps and swaps them into the pinned links with
//! `BPF_LINK_UPDATE` (an atomic replace: kernel/bpf/cgroup.c
//! `cgroup_bpf_replace`), so no packet ever meets a cgroup without a
//! program.
//!
//! The previous release pinned one directory per whole layout,
//! `<pin path>/v3/{maps/<NAME>, links/<cgroup id>-<prog>}`. `open` adopts
//! it in place: its maps are pinned again under the new names (the same
//! map objects, so learned state, counters and the rings carry over and
//! both agents' programs share them during the takeover), its links are
//! taken over one by one as the new programs are swapped in, and the old
//! directory goes once everything enforces (`retire_old`).

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use thiserror::Error;
use tracing::info;

use super::programs::{LEGACY_V3_MAPS, MAPS, map_version};

/// The previous release's layout directory.
pub const LEGACY_LAYOUT: &str = "v3";

#[derive(Debug, Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.to_owned(), source }
}

/// Where one agent's pinned objects live.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
    /// The previous release's layout directory, while it exists.
    legacy: Option<PathBuf>,
}

const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// Removes a pin; a missing one is fine.
pub fn unpin(path: &Path) -> Result<(), PinError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PinError::Io { path: path.to_owned(), source: e }),
    }
}

impl Pins {
    /// `base` must be on bpffs; the layout directories are created, and a
    /// previous release's maps are adopted (see the module docs).
    pub fn open(base: &Path) -> Result<Self, PinError> {
        for dir in [base.join("maps"), base.join("links"), base.join("veths")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let fs = nix::sys::statfs::statfs(base).map_err(|e| PinError::Io { path: base.to_owned(), source: e.into() })?;
        if fs.filesystem_type().0 != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs { path: base.to_owned() });
        }
        let legacy = Some(base.join(LEGACY_LAYOUT)).filter(|d| d.is_dir());
        let pins = Self { root: base.to_owned(), legacy };
        pins.adopt_legacy_maps()?;
        Ok(pins)
    }

    /// Pins the previous release's maps under this layout's names where
    /// their version is ours (and nothing is pinned there yet).
    fn adopt_legacy_maps(&self) -> Result<(), PinError> {
        let Some(old) = &self.legacy else { return Ok(()) };
        let mut n = 0;
        for (name, version) in LEGACY_V3_MAPS {
            let (from, to) = (old.join("maps").join(name), self.map(name));
            if map_version(name) != Some(version) || !from.exists() || to.exists() {
                continue;
            }
            let fd = obj_get(&from).map_err(io_err(&from))?;
            obj_pin(fd.as_fd(), &to).map_err(io_err(&to))?;
            n += 1;
        }
        info!(maps = n, from = %old.display(), "adopting the previous release's pinned layout");
        Ok(())
    }

    /// Where map `name` is pinned (at its version).
    pub fn map(&self, name: &str) -> PathBuf {
        let version = map_version(name).unwrap_or(0);
        self.root.join("maps").join(format!("{name}@{version}"))
    }

    /// Whether a previous agent left its maps here (so this one adopts).
    pub fn has_state(&self) -> bool {
        self.map("CONFIG").exists()
    }

    pub fn link(&self, cgroup_id: u64, program: &str) -> PathBuf {
        self.root.join("links").join(format!("{cgroup_id}-{program}"))
    }

    /// A veth program's tcx link on host-side interface `ifindex` (node
    /// mode: it outlives the agent, and the next agent swaps its program).
    pub fn veth_link(&self, ifindex: u32, program: &str) -> PathBuf {
        self.root.join("veths").join(format!("{ifindex}-{program}"))
    }

    /// Every pinned veth link, with its interface.
    pub fn veth_links(&self) -> io::Result<Vec<(u32, PathBuf)>> {
        let dir = self.root.join("veths");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name.split_once('-')?.0.parse().ok()?, e.path()))
            })
            .collect())
    }

    /// The previous release's pin of the same link, if it is still there.
    pub fn legacy_link(&self, cgroup_id: u64, program: &str) -> Option<PathBuf> {
        let p = self.legacy.as_ref()?.join("links").join(format!("{cgroup_id}-{program}"));
        p.exists().then_some(p)
    }

    /// Takes over a previous release's link: pins it under this layout's
    /// name, then drops the old name (the link, and its program, stay).
    pub fn adopt_legacy_link(&self, old: &Path, new: &Path) -> Result<(), PinError> {
        let fd = obj_get(old).map_err(io_err(old))?;
        obj_pin(fd.as_fd(), new).map_err(io_err(new))?;
        unpin(old)
    }

    /// Everything pinned under `links/` (links and per-attach-point
    /// caches), the previous release's too.
    pub fn links(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let legacy = self.legacy.as_ref().map(|d| d.join("links"));
        for dir in std::iter::once(self.root.join("links")).chain(legacy) {
            match fs::read_dir(&dir) {
                Ok(rd) => out.extend(rd.filter_map(Result::ok).map(|e| e.path())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Unpins every link of `cgroup_id` (both layouts): its programs detach
    /// once no process holds the links any more.
    pub fn unlink_cgroup(&self, cgroup_id: u64) -> Result<(), PinError> {
        let prefix = format!("{cgroup_id}-");
        for p in self.links().map_err(io_err(&self.root))? {
            if p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&prefix)) {
                unpin(&p)?;
            }
        }
        Ok(())
    }

    /// Once this agent's programs enforce everywhere: removes the previous
    /// release's directory (links no endpoint claimed detach; its maps stay
    /// while our pins and programs hold them) and the pins of map versions
    /// this agent does not use.
    pub fn retire_old(&mut self) -> Result<(), PinError> {
        if let Some(old) = self.legacy.take() {
            remove_all(&old)?;
            info!(dir = %old.display(), "removed the previous release's pinned layout");
        }
        let dir = self.root.join("maps");
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let current =
                name.split_once('@').is_some_and(|(n, v)| MAPS.iter().any(|m| m.name == n && m.version.to_string() == v));
            if !current {
                unpin(&e.path())?;
            }
        }
        Ok(())
    }
}

/// Removes everything pinned under `base` (every layout): programs detach
/// and maps are freed once no process holds them. Missing `base` is fine.
pub fn remove_all(base: &Path) -> Result<(), PinError> {
    match fs::remove_dir_all(base) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PinError::Io { path: base.to_owned(), source: e }),
    }
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Opens a pinned object (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // union bpf_attr { struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; } }
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr outlives the call; the kernel reads a NUL-terminated path.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins an object (`BPF_OBJ_PIN`) at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: attr outlives the call; the kernel reads a NUL-terminated path.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces the program of a link atomically (`BPF_LINK_UPDATE`).
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(new_prog.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: attr outlives the call; both fds are valid for its duration.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Swaps `prog` into the link pinned at `path`.
pub fn update_pinned_link(path: &Path, prog: impl AsFd) -> io::Result<()> {
    let link = obj_get(path)?;
    link_update(link.as_fd(), prog.as_fd())
}
