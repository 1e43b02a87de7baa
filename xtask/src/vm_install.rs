//! What `cargo xtask vm` needs, installed once and checked first like
//! `setup`: Debian's QEMU, busybox-static (virtme-ng's initramfs), kmod
//! (depmod here, modprobe in the guest) and `file` (virtme-ng reads the
//! kernel's version with it); virtme-ng in a venv of its own; Debian 12's
//! kernel images of the 6.1 and 6.12 series, unpacked under
//! `STATE/kernels` with `apt-get download` + `dpkg-deb -x`, so the host's
//! /boot, initramfs and bootloader stay untouched. Nothing is fetched once
//! all is there.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{self, cmd},
};

/// Kernels, the virtme-ng venv, and one directory per run (shared with the
/// guest: not under /var/cache, which virtme-ng hides behind a tmpfs).
pub const STATE: &str = "/var/lib/portcullis-vm";
const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "file", "python3-venv"];
/// Pinned: `vm::guest_script` works around how its init finds its ports.
const VIRTME_NG: &str = "1.42";

/// A Debian kernel series: the meta-package that depends on its newest image.
pub struct Series {
    pub name: &'static str,
    meta: &'static str,
    prefix: &'static str,
}

pub const SERIES: &[Series] = &[
    Series { name: "6.1", meta: "linux-image-amd64", prefix: "linux-image-6.1.0-" },
    Series { name: "6.12", meta: "linux-image-6.12-amd64", prefix: "linux-image-6.12." },
];

/// Debian packages and virtme-ng (in a venv: no PEP 668 refusal, no change
/// to the system's Python). Returns the `vng` to run.
pub fn tools() -> anyhow::Result<PathBuf> {
    let mut missing = Vec::new();
    for &pkg in PACKAGES {
        let out =
            cmd("dpkg-query", ["-W", "-f=${Status}", pkg]).output().context("cannot run dpkg-query: Debian-like systems only")?;
        if !setup::dpkg_installed(&String::from_utf8_lossy(&out.stdout)) {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() {
        println!("xtask vm: Debian packages ... installing {}", missing.join(" "));
        apt_update()?;
        let mut install = cmd("apt-get", ["install", "-y", "--no-install-recommends"]);
        install.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        util::run(&mut install)?;
    }
    let venv = Path::new(STATE).join("venv");
    let vng = venv.join("bin/vng");
    let has_version = || {
        util::output(&mut cmd(&vng.to_string_lossy(), ["--version"]))
            .is_ok_and(|v| v.split_whitespace().nth(1) == Some(VIRTME_NG))
    };
    if has_version() {
        return Ok(vng);
    }
    println!("xtask vm: virtme-ng {VIRTME_NG} ... installing into {}", venv.display());
    util::run(cmd("python3", ["-m", "venv", "--clear"]).arg(&venv))?;
    let pip = venv.join("bin/pip");
    let spec = format!("virtme-ng=={VIRTME_NG}");
    util::run(&mut cmd(&pip.to_string_lossy(), ["install", "--quiet", &spec]))?;
    if !has_version() {
        bail!("virtme-ng was installed but `{} --version` does not say {VIRTME_NG}", vng.display());
    }
    Ok(vng)
}

fn apt_update() -> anyhow::Result<()> {
    util::run(cmd("apt-get", ["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The kernel image of `series`, unpacked once under `STATE/kernels/PKG`.
pub fn kernel(series: &Series) -> anyhow::Result<PathBuf> {
    let kernels = Path::new(STATE).join("kernels");
    if let Some(image) = installed(&kernels, series.prefix) {
        return Ok(image);
    }
    println!("xtask vm: kernel {} ... fetching ({})", series.name, series.meta);
    apt_update()?;
    let deps = util::output(&mut cmd("apt-cache", ["depends", series.meta]))?;
    let signed = first_dependency(&deps).with_context(|| format!("{} depends on no kernel", series.meta))?;
    // The same files as the signed package, without the Secure Boot signature.
    let pkg = format!("{signed}-unsigned");
    if !pkg.starts_with(series.prefix) {
        bail!("{} names {pkg}, not a {} kernel", series.meta, series.name);
    }
    let debs = Path::new(STATE).join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    // As root: apt's `_apt` sandbox user cannot write here.
    let mut download = cmd("apt-get", ["download", "-o", "APT::Sandbox::User=root", &pkg]);
    util::run(download.current_dir(&debs))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {pkg} left no .deb"))?;
    let partial = kernels.join(format!("{pkg}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    util::run(cmd("dpkg-deb", ["-x"]).arg(&deb).arg(&partial))?;
    // What the package's postinst would do: virtme-ng looks modules up in modules.dep.
    let base = if partial.join("lib/modules").is_dir() { partial.clone() } else { partial.join("usr") };
    let version = only_entry(&base.join("lib/modules"))?;
    util::run(cmd("depmod", ["-b"]).arg(&base).arg(&version))?;
    fs::rename(&partial, kernels.join(&pkg))?;
    fs::remove_dir_all(&debs)?;
    let image = installed(&kernels, series.prefix).context("the unpacked kernel has no boot/vmlinuz-*")?;
    println!("xtask vm: kernel {} ... installed {}", series.name, image.display());
    Ok(image)
}

/// `boot/vmlinuz-*` of the newest completely unpacked package `prefix*`.
fn installed(kernels: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<(SystemTime, PathBuf)> = fs::read_dir(kernels)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && !name.ends_with(".partial")
        })
        .filter_map(|e| {
            let mut boot = fs::read_dir(e.path().join("boot")).ok()?.filter_map(Result::ok);
            let image = boot.find(|f| f.file_name().to_string_lossy().starts_with("vmlinuz-"))?;
            Some((e.metadata().ok()?.modified().ok()?, image.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, image)| image)
}

fn only_entry(dir: &Path) -> anyhow::Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{}: expected one kernel version, found {names:?}", dir.display()),
    }
}

/// The first real `Depends:` of `apt-cache depends` output.
pub fn first_dependency(text: &str) -> Option<&str> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .map(str::trim)
        .find(|d| !d.starts_with('<'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_names_its_kernel() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(first_dependency(text), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(first_dependency("x\n  Depends: <virtual>\n |Depends: real\n"), Some("real"));
        assert_eq!(first_dependency("x\n  Recommends: y\n"), None);
    }

    #[test]
    fn only_complete_kernels_of_the_series_count() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (pkg, image) in [
            ("linux-image-6.1.0-57-amd64-unsigned", "vmlinuz-6.1.0-57-amd64"),
            ("linux-image-6.12.1+deb12-amd64-unsigned.partial", "vmlinuz-6.12.1+deb12-amd64"),
        ] {
            fs::create_dir_all(dir.join(pkg).join("boot")).unwrap();
            fs::write(dir.join(pkg).join("boot").join(image), b"").unwrap();
        }
        let got = installed(&dir, "linux-image-6.1.0-").unwrap();
        assert!(got.ends_with("linux-image-6.1.0-57-amd64-unsigned/boot/vmlinuz-6.1.0-57-amd64"));
        assert_eq!(installed(&dir, "linux-image-6.12."), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
