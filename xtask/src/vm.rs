//! `cargo xtask vm --kernel 6.1|6.12|PATH -- CMD...`: runs CMD as root in a
//! QEMU guest of that kernel booted on the host's own root filesystem, the
//! way virtme-ng does it (read-only 9p; tmpfs overlays on /etc, /usr, /var,
//! /tmp; the workspace an overlay too, so the guest may write there and the
//! host sees none of it), from the workspace root; streams its output and
//! exits with its status. Software emulation (TCG) unless `--kvm`: KVM hangs
//! on this project's VMs. A kernel that does not boot is an error.
//!
//! What it needs is installed once (`vm_install.rs`). The guest has cgroup2
//! at /sys/fs/cgroup, bpffs, /run a tmpfs, the host's tools and the
//! kernel's modules (veth...), no network device. Boot takes 10-40 s.

use std::{
    env, fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    setup, util,
    vm_install::{self, SERIES, STATE},
};

#[derive(Args, Debug)]
pub struct VmArgs {
    /// `6.1` or `6.12` (Debian 12's newest of the series), or a kernel image
    /// (its modules in `../lib/modules/VERSION` beside its `boot/`).
    #[arg(long)]
    pub kernel: String,
    /// Guest memory (QEMU's `-m`).
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// Guest CPUs (QEMU's `-smp`).
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Use KVM instead of software emulation.
    #[arg(long)]
    pub kvm: bool,
    /// Show the guest's kernel console on stderr.
    #[arg(long)]
    pub boot_log: bool,
    /// One argument: a shell command line; more: a program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[expect(clippy::exit, reason = "the guest's exit status is ours")]
pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask vm` needs root (apt; the guest runs the host's files as root)");
    }
    setup::run(setup::Mode::Quiet)?;
    let vng = vm_install::tools()?;
    let kernel = match SERIES.iter().find(|s| s.name == args.kernel) {
        Some(series) => vm_install::kernel(series)?,
        None if Path::new(&args.kernel).is_file() => PathBuf::from(&args.kernel),
        None => bail!("--kernel {}: neither 6.1, 6.12 nor a kernel image", args.kernel),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent dir")?;
    // The guest's marks: a read-write 9p export.
    let dir = Path::new(STATE).join("run").join(std::process::id().to_string());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("script.sh");
    fs::write(&script, guest_script(&dir, root, &args.cmd, env::vars()))?;

    // vng runs virtme-run from PATH: the venv's bin first.
    let bin = vng.parent().context("vng has no directory")?;
    let path =
        env::join_paths(std::iter::once(bin.to_path_buf()).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())))?;
    let mut vng = Command::new(&vng);
    vng.env("PATH", path);
    vng.arg("--run").arg(&kernel);
    vng.args(["--cpus", &args.cpus.to_string(), "--memory", &args.memory]);
    vng.arg("--rwdir").arg(&dir).arg("--overlay-rwdir").arg(root);
    vng.args((!args.kvm).then_some("--disable-kvm"));
    vng.args(args.boot_log.then_some("--verbose"));
    vng.arg("--exec").arg(format!("sh {}", script.display()));
    println!("xtask vm: booting {} ({} CPUs, {})", kernel.display(), args.cpus, args.memory);
    let started = Instant::now();
    let vng_status = stream(&mut vng);
    let booted = dir.join("booted").exists();
    let status = fs::read_to_string(dir.join("status"));
    let _ = fs::remove_dir_all(&dir);
    let vng_status = vng_status?;
    let code = match (booted, status) {
        (false, _) => bail!(
            "the guest of {} never ran the command: it did not boot or vng failed ({vng_status}); see --boot-log",
            kernel.display()
        ),
        (true, Err(_)) => {
            bail!("the guest stopped before the command ended (panic? out of memory?): see --boot-log")
        }
        (true, Ok(code)) => code.trim().parse::<i32>().with_context(|| format!("guest status {code:?}"))?,
    };
    let secs = started.elapsed().as_secs_f32();
    println!("xtask vm: exit status {code} after {secs:.1} s, boot included");
    std::process::exit(code);
}

/// Runs `command` with its stdout and stderr through pipes: QEMU opens
/// `/proc/self/fd/1` once per virtio port, and on a regular file these
/// opens have offsets of their own that overwrite each other.
fn stream(command: &mut Command) -> anyhow::Result<ExitStatus> {
    let shown = util::display(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let out = child.stdout.take().context("no stdout pipe")?;
    let err = child.stderr.take().context("no stderr pipe")?;
    let pumps = [pump(out, io::stdout()), pump(err, io::stderr())];
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    for p in pumps {
        let _ = p.join();
    }
    Ok(status)
}

fn pump(mut from: impl Read + Send + 'static, mut to: impl Write + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.flush();
    })
}

/// What the guest runs (virtme-ng-init, as root): marks `booted` and
/// `status` in `dir`. Without udev on the host (this project's VMs have
/// none) virtme-ng-init finds no `/dev/virtio-ports/virtme.*` links, runs
/// the script on the serial console and reports no status: the script then
/// opens the ports itself.
pub fn guest_script(dir: &Path, root: &Path, command: &[String], host_env: impl Iterator<Item = (String, String)>) -> String {
    let command = match command {
        [line] => line.clone(),
        argv => argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" "),
    };
    let exports: String =
        host_env.filter(|(k, _)| passed_through(k)).map(|(k, v)| format!("export {k}={}\n", sh_quote(&v))).collect();
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask vm`; run by virtme-ng-init in the guest.
run={dir}
: > "$run/booted"
if [ ! -e /dev/virtio-ports/virtme.stdout ]; then
    port() {{
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat "$p/name")" = "$1" ] && echo "/dev/${{p##*/}}" && return
        done
    }}
    exec </dev/null >"$(port virtme.stdout)" 2>"$(port virtme.stderr)"
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
{exports}cd {root} || {{ echo 125 > "$run/status"; exit 125; }}
(
{command}
)
echo $? > "$run/status"
"#,
        dir = sh_quote(&dir.to_string_lossy()),
        root = sh_quote(&root.to_string_lossy()),
    )
}

/// Host variables the guest gets: where the tools are, and what tests read.
fn passed_through(name: &str) -> bool {
    matches!(name, "PATH" | "CI" | "RUST_BACKTRACE" | "RUST_LOG" | "CARGO_HOME" | "RUSTUP_HOME")
        || name.starts_with("PORTCULLIS_")
}

pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_sh() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        let env = [("PATH", "/bin"), ("SECRET", "x"), ("PORTCULLIS_BIN", "/p b")];
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
        let argv = ["echo".to_owned(), "a b".to_owned()];
        let s = guest_script(Path::new("/r"), Path::new("/w"), &argv, env);
        assert!(s.contains("\nexport PATH='/bin'\nexport PORTCULLIS_BIN='/p b'\ncd '/w' || {"), "{s}");
        assert!(s.contains("\n(\n'echo' 'a b'\n)\necho $? > \"$run/status\"\n"), "{s}");
        assert!(!s.contains("SECRET"));
    }

    #[test]
    fn one_argument_is_a_shell_line() {
        let line = ["uname -r; exit 3".to_owned()];
        let s = guest_script(Path::new("/r"), Path::new("/w"), &line, std::iter::empty());
        assert!(s.contains("\n(\nuname -r; exit 3\n)\n"), "{s}");
        assert!(s.starts_with("#!/bin/sh\n") && s.contains("\nrun='/r'\n"), "{s}");
    }
}
