//! Small helpers: running commands, who we are, where things are.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::PathBuf,
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, bail};

/// `program args...` as one line, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let envs: Vec<String> =
        cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy()))).collect();
    if envs.is_empty() { parts.join(" ") } else { format!("{} {}", envs.join(" "), parts.join(" ")) }
}

/// Builds a [`Command`] from a program and its arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

fn check(cmd: &Command, status: ExitStatus) -> anyhow::Result<()> {
    if status.success() { Ok(()) } else { bail!("`{}` failed ({status})", display(cmd)) }
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start `{}`", display(cmd)))?;
    check(cmd, status)
}

/// Runs `cmd` and returns its stdout; fails (showing stderr) unless it exits 0.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", display(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Effective uid from the text of `/proc/self/status` (`Uid: real effective saved fs`).
pub fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_euid) == Some(0)
}

/// `CI=true` (also `1`/`yes`, any case), as CI sets it.
pub fn env_flag(name: &str) -> bool {
    env::var(name).is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// `$CARGO_HOME`, else `$HOME/.cargo` (rustup's default).
pub fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Undoes the octal escapes (`\040` for a space, ...) of `/proc/mounts` fields.
pub fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(mount point, fs type)` of every line of `/proc/mounts` text.
pub fn mounts(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let point = fields.next()?;
        let fstype = fields.next()?;
        Some((unescape_mount_field(point), fstype.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euid_is_the_second_uid() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_euid(status), Some(0));
        assert_eq!(parse_euid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(parse_euid("Name: x\n"), None);
    }

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape_mount_field(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_field(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mount_field(r"/plain\09"), r"/plain\09");
        assert_eq!(unescape_mount_field("/sys/fs/bpf"), "/sys/fs/bpf");
    }

    #[test]
    fn mounts_are_listed() {
        let text = "bpf /sys/fs/bpf bpf rw,relatime 0 0\n\
                    cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let got: Vec<_> = mounts(text).collect();
        assert_eq!(got[0], ("/sys/fs/bpf".into(), "bpf".into()));
        assert_eq!(got[1], ("/sys/fs/cgroup/unified".into(), "cgroup2".into()));
    }
}
