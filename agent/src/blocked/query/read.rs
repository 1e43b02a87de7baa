//! Reading the node's log files: every rotated file, oldest first
//! (`blocked.log.N` ... `blocked.log.1`, then `blocked.log`), and
//! following the live one across rotations (polling: a rename leaves the
//! open file readable to its end, then the new file is read from its
//! start).

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use super::entry::Entry;
use crate::blocked::rotate::{FILE_NAME, rotated};

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("no blocked log in {0} (no {FILE_NAME} nor rotated files): is this the agent's state directory (--dir)?")]
    NoLog(PathBuf),
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The files of a log, oldest first: the rotated ones that exist, then the
/// live one (whether or not it exists yet).
pub fn files_of(live: &Path) -> Vec<PathBuf> {
    let mut rotated_files: Vec<(u32, PathBuf)> = Vec::new();
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else { return vec![live.to_owned()] };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{}.", name.to_string_lossy());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(k) = n.strip_prefix(&prefix).and_then(|k| k.parse::<u32>().ok()) {
                rotated_files.push((k, rotated(live, k)));
            }
        }
    }
    rotated_files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut out: Vec<PathBuf> = rotated_files.into_iter().map(|(_, p)| p).collect();
    out.push(live.to_owned());
    out
}

/// Every record of `files` in order to `each`; lines that are not records
/// are counted (returned). A missing file is skipped; none at all is an
/// error.
pub fn read_all(files: &[PathBuf], mut each: impl FnMut(Entry)) -> Result<u64, ReadError> {
    let mut skipped = 0;
    let mut any = false;
    for f in files {
        let file = match File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ReadError::Io(f.clone(), e)),
        };
        any = true;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|e| ReadError::Io(f.clone(), e))?;
            if line.is_empty() {
                continue;
            }
            match std::str::from_utf8(&line).ok().and_then(Entry::parse) {
                Some(e) => each(e),
                None => skipped += 1,
            }
        }
    }
    if !any {
        let dir = files.last().and_then(|f| f.parent()).map_or_else(|| PathBuf::from("."), Path::to_owned);
        return Err(ReadError::NoLog(dir));
    }
    Ok(skipped)
}

/// How often `--follow` looks at the file.
const POLL: Duration = Duration::from_millis(200);

/// The live file being followed.
struct Tail {
    path: PathBuf,
    file: Option<(File, (u64, u64))>,
    partial: Vec<u8>,
}

impl Tail {
    /// From the current end of `path` (what is there was printed already).
    fn at_end(path: &Path) -> Self {
        let file = open_at(path, SeekFrom::End(0));
        Self { path: path.to_owned(), file, partial: Vec::new() }
    }

    /// New complete lines, across a rotation.
    fn poll(&mut self, out: &mut Vec<String>) -> std::io::Result<()> {
        if let Some((f, _)) = &mut self.file {
            read_lines(f, &mut self.partial, out)?;
        }
        let now = std::fs::metadata(&self.path).ok().map(|m| ((m.dev(), m.ino()), m.len()));
        match (&mut self.file, now) {
            (Some((_, id)), Some((nid, _))) if *id == nid => {}
            // Rotated or created: the rest of the old one (written
            // between the read above and the rotation), then the new one.
            (_, Some(_)) => {
                if let Some((f, _)) = &mut self.file {
                    read_lines(f, &mut self.partial, out)?;
                }
                self.partial.clear();
                self.file = open_at(&self.path, SeekFrom::Start(0));
                if let Some((f, _)) = &mut self.file {
                    read_lines(f, &mut self.partial, out)?;
                }
            }
            (_, None) => {}
        }
        Ok(())
    }
}

fn open_at(path: &Path, at: SeekFrom) -> Option<(File, (u64, u64))> {
    let mut f = File::open(path).ok()?;
    let md = f.metadata().ok()?;
    f.seek(at).ok()?;
    Some((f, (md.dev(), md.ino())))
}

#[expect(clippy::verbose_file_reads, reason = "from the file's current offset on (what is new), not the whole file")]
fn read_lines(f: &mut File, partial: &mut Vec<u8>, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    for b in buf {
        if b == b'\n' {
            out.push(String::from_utf8_lossy(partial).into_owned());
            partial.clear();
        } else if partial.len() < 1 << 20 {
            partial.push(b);
        }
    }
    Ok(())
}

/// Follows `live` from its current end, handing each new record to
/// `each` until it returns false.
pub fn follow(live: &Path, mut each: impl FnMut(Entry) -> bool) -> Result<(), ReadError> {
    let mut tail = Tail::at_end(live);
    let mut lines = Vec::new();
    loop {
        tail.poll(&mut lines).map_err(|e| ReadError::Io(live.to_owned(), e))?;
        for l in lines.drain(..) {
            if let Some(e) = Entry::parse(&l)
                && !each(e)
            {
                return Ok(());
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn line(n: u32) -> String {
        format!("{{\"v\":1,\"kind\":\"attempt\",\"time\":\"2026-11-23T10:00:00.000Z\",\"endpoint\":\"e\",\"dport\":{n}}}\n")
    }

    #[test]
    fn rotated_files_are_read_oldest_first_and_torn_lines_skipped() {
        let d = std::env::temp_dir().join(format!("portcullis-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let live = d.join(FILE_NAME);
        assert!(matches!(read_all(&files_of(&live), |_| {}), Err(ReadError::NoLog(_))));
        std::fs::write(d.join("blocked.log.10"), line(1)).unwrap();
        std::fs::write(d.join("blocked.log.2"), line(2)).unwrap();
        std::fs::write(d.join("blocked.log.1"), format!("{}{{\"torn\":", line(3))).unwrap();
        std::fs::write(&live, line(4)).unwrap();
        std::fs::write(d.join("blocked.log.old"), line(99)).unwrap();
        let mut got = Vec::new();
        let skipped = read_all(&files_of(&live), |e| got.push(e.dport.unwrap())).unwrap();
        assert_eq!((got, skipped), (vec![1, 2, 3, 4], 1));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn following_sees_new_lines_across_a_rotation() {
        let d = std::env::temp_dir().join(format!("portcullis-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let live = d.join(FILE_NAME);
        std::fs::write(&live, line(1)).unwrap();
        let mut tail = Tail::at_end(&live);
        let mut out = Vec::new();
        tail.poll(&mut out).unwrap();
        assert!(out.is_empty(), "what was there is not repeated");
        let mut f = std::fs::OpenOptions::new().append(true).open(&live).unwrap();
        f.write_all(line(2).as_bytes()).unwrap();
        f.write_all(b"{\"half").unwrap();
        tail.poll(&mut out).unwrap();
        assert_eq!(out.len(), 1);
        f.write_all(b"\":1}\n").unwrap();
        // Rotated: the rest of the old file, then the new one.
        std::fs::rename(&live, d.join("blocked.log.1")).unwrap();
        std::fs::write(&live, line(3)).unwrap();
        tail.poll(&mut out).unwrap();
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[1], "{\"half\":1}");
        assert!(out[2].contains("\"dport\":3"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
