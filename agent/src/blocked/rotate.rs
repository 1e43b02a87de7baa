//! The blocked log's file on the node, bounded by size: when the next line
//! would take `blocked.log` over `max_bytes`, it is renamed to
//! `blocked.log.1` (`.1` to `.2`, ...; the oldest beyond `files` in all is
//! removed) and a new one started. Rename rotation is what log shippers
//! (Fluent Bit, Vector, the OTel filelog receiver) and `portcullis blocked
//! --follow` follow. Lines are written whole with one `write` on an
//! `O_APPEND` file, so a reader never sees half of one except after a
//! crash (readers skip a torn last line).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Default size of one file (10 MiB) and number of files (the live one and
/// four rotated): what the Hubble exporter, GKE's policy logs and kubelet's
/// container logs keep.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_FILES: u32 = 5;
/// The live file's name in a log directory.
pub const FILE_NAME: &str = "blocked.log";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateSpec {
    pub path: PathBuf,
    /// Largest size of one file (a single longer line still goes in whole).
    pub max_bytes: u64,
    /// Files kept, the live one included (1: the live file is truncated).
    pub files: u32,
    /// Mode of files created (0o600 in the node's state directory: the log
    /// holds what pods tried to reach).
    pub mode: u32,
}

impl RotateSpec {
    pub fn new(path: PathBuf) -> Self {
        Self { path, max_bytes: DEFAULT_MAX_BYTES, files: DEFAULT_FILES, mode: 0o600 }
    }
}

/// `path.N`: the Nth most recent rotated file.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

pub struct Rotating {
    spec: RotateSpec,
    file: File,
    size: u64,
    id: (u64, u64),
}

fn open(spec: &RotateSpec) -> std::io::Result<(File, u64, (u64, u64))> {
    let file = OpenOptions::new().create(true).append(true).mode(spec.mode).open(&spec.path)?;
    let md = file.metadata()?;
    Ok((file, md.len(), (md.dev(), md.ino())))
}

impl Rotating {
    pub fn open(spec: RotateSpec) -> std::io::Result<Self> {
        if let Some(dir) = spec.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let (file, size, id) = open(&spec)?;
        Ok(Self { spec, file, size, id })
    }

    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// Appends `line` (which ends in a newline); true when the file was
    /// rotated first.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<bool> {
        // Another writer (the previous agent, during a takeover) may have
        // rotated the file under us: write to the one at the path.
        match std::fs::metadata(&self.spec.path) {
            Ok(md) if (md.dev(), md.ino()) == self.id => {}
            _ => self.reopen()?,
        }
        let mut rotated = false;
        if self.size > 0 && self.size + line.len() as u64 > self.spec.max_bytes {
            self.rotate()?;
            rotated = true;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(rotated)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        (self.file, self.size, self.id) = open(&self.spec)?;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.spec.path;
        let keep = self.spec.files.max(1) - 1;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
        }
        self.reopen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("portcullis-rotate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn files_in(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn rotation_keeps_n_files_each_within_the_size_and_the_newest_lines() {
        let d = dir("keep");
        let spec = RotateSpec { max_bytes: 100, files: 3, ..RotateSpec::new(d.join(FILE_NAME)) };
        let mut w = Rotating::open(spec).unwrap();
        let mut rotations = 0;
        for i in 0..40 {
            // 20 bytes a line: 5 lines a file.
            let line = format!("{{\"n\":{i:>10}}}   \n");
            assert_eq!(line.len(), 20);
            rotations += u32::from(w.write_line(line.as_bytes()).unwrap());
        }
        assert_eq!(rotations, 7);
        assert_eq!(files_in(&d), ["blocked.log", "blocked.log.1", "blocked.log.2"]);
        for f in files_in(&d) {
            assert!(std::fs::metadata(d.join(&f)).unwrap().len() <= 100, "{f}");
            assert_eq!(std::fs::metadata(d.join(&f)).unwrap().mode() & 0o777, 0o600, "{f}");
        }
        // Oldest first: .2, .1, live: the last 15 lines in order.
        let all: String = ["blocked.log.2", "blocked.log.1", "blocked.log"]
            .iter()
            .map(|f| std::fs::read_to_string(d.join(f)).unwrap())
            .collect();
        let nums: Vec<u32> = all.lines().map(|l| l[5..15].trim().parse().unwrap()).collect();
        assert_eq!(nums, (25..40).collect::<Vec<_>>());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn one_file_is_started_over_and_an_outside_rotation_is_followed() {
        let d = dir("one");
        let spec = RotateSpec { max_bytes: 30, files: 1, ..RotateSpec::new(d.join(FILE_NAME)) };
        let mut w = Rotating::open(spec).unwrap();
        for _ in 0..4 {
            w.write_line(b"0123456789\n").unwrap();
        }
        assert_eq!(files_in(&d), ["blocked.log"]);
        // 11 bytes a line, 30 at most: two lines, then it starts over.
        assert_eq!(std::fs::read_to_string(d.join(FILE_NAME)).unwrap(), "0123456789\n".repeat(2));
        // Someone else renamed it away: the next line goes to a new file
        // at the path, not into the renamed one.
        std::fs::rename(d.join(FILE_NAME), d.join("moved")).unwrap();
        w.write_line(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(d.join(FILE_NAME)).unwrap(), "after\n");
        assert_eq!(std::fs::read_to_string(d.join("moved")).unwrap(), "0123456789\n".repeat(2));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
