//! Pinning in bpffs, so enforcement outlives the agent process (node mode).
//!
//! Layout under the configured pin path (one directory per map layout, so
//! an agent never adopts maps whose key or value layout it does not share):
//!
//! ```text
//! <pin path>/v3/maps/<MAP NAME>          every map of the object
//! <pin path>/v3/links/<cgroup id>-<prog> one cgroup bpf_link per program
//! ```
//!
//! A pinned link keeps its program attached while no process holds it, and
//! the program keeps the maps. A new agent loads its own programs against
//! the pinned maps and swaps them into the pinned links with
//! `BPF_LINK_UPDATE` (an atomic replace: kernel/bpf/cgroup.c
//! `cgroup_bpf_replace`), so no packet ever meets a cgroup without a
//! program.

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

/// Bumped whenever a map's key, value or type changes.
pub const LAYOUT: &str = "v3";

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
}

const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

impl Pins {
    /// `base` must be on bpffs; the layout directories are created.
    pub fn open(base: &Path) -> Result<Self, PinError> {
        let root = base.join(LAYOUT);
        for dir in [root.join("maps"), root.join("links")] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let fs = nix::sys::statfs::statfs(&root).map_err(|e| PinError::Io { path: root.clone(), source: e.into() })?;
        if fs.filesystem_type().0 != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs { path: root });
        }
        Ok(Self { root })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Whether a previous agent left its maps here (so this one adopts).
    pub fn has_state(&self) -> bool {
        self.map("CONFIG").exists()
    }

    pub fn link(&self, cgroup_id: u64, program: &str) -> PathBuf {
        self.root.join("links").join(format!("{cgroup_id}-{program}"))
    }

    /// Everything pinned under `links/` (links and per-attach-point caches).
    pub fn links(&self) -> io::Result<Vec<PathBuf>> {
        Ok(fs::read_dir(self.root.join("links"))?.filter_map(Result::ok).map(|e| e.path()).collect())
    }

    /// Unpins every link of `cgroup_id`: its programs detach once no
    /// process holds the links any more.
    pub fn unlink_cgroup(&self, cgroup_id: u64) -> Result<(), PinError> {
        let prefix = format!("{cgroup_id}-");
        let dir = self.root.join("links");
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                fs::remove_file(&p).map_err(io_err(&p))?;
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
