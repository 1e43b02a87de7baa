//! Setup step: bpf-linker built against the `nightly` toolchain's own LLVM.
//!
//! The library is found at run time in `$(rustc +nightly --print sysroot)/lib`
//! as `libLLVM.so.<llvm>-rust-<rust>`; its LLVM major picks bpf-linker's
//! `llvm-<major>` feature. A stamp records the nightly it was built for, so a
//! new nightly triggers a rebuild (`--force`).

use std::{fs, os::unix::fs::symlink, path::Path};

use anyhow::{Context as _, bail};

use crate::{
    setup::Report,
    util::{self, cmd},
};

const BPF_LINKER_VERSION: &str = "^0.13";

/// The LLVM shared library shipped in a toolchain's `lib/`.
#[derive(Debug, PartialEq, Eq)]
pub struct LlvmLib {
    /// e.g. `22.1`
    pub version: String,
    pub major: u32,
}

/// Parses `libLLVM.so.<llvm-version>-rust-<rust-version>` (e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly`).
pub fn parse_llvm_lib_name(name: &str) -> Option<LlvmLib> {
    let rest = name.strip_prefix("libLLVM.so.")?;
    let (version, rust) = rest.split_once("-rust-")?;
    if rust.is_empty() {
        return None;
    }
    let major = version.split('.').next()?.parse().ok()?;
    Some(LlvmLib { version: version.to_owned(), major })
}

/// A folder name for a `rustc --version` line:
/// `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)` → `1.97.0-nightly-e50aa6fba-2026-05-19`.
pub fn version_dir_name(version_line: &str) -> String {
    let v = version_line.trim().strip_prefix("rustc ").unwrap_or(version_line.trim());
    let mapped: String = v.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    mapped.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-")
}

pub(crate) fn ensure(r: &mut Report) -> anyhow::Result<()> {
    let nightly = util::output(&mut cmd("rustc", ["+nightly", "--version"]))?.trim().to_owned();
    let sysroot = util::output(&mut cmd("rustc", ["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut found = Vec::new();
    for entry in fs::read_dir(&lib_dir).with_context(|| format!("listing {}", lib_dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(llvm) = parse_llvm_lib_name(&name) {
            found.push((name, llvm));
        }
    }
    let (file, llvm) = match found.len() {
        1 => found.remove(0),
        0 => bail!("no libLLVM.so.<ver>-rust-<ver> in {} ({nightly})", lib_dir.display()),
        _ => bail!("several libLLVM.so.* in {}: {found:?}", lib_dir.display()),
    };
    let step = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {} of {nightly})", llvm.version);

    let home = util::cargo_home()?;
    let bin = home.join("bin").join("bpf-linker");
    let base = home.join("portcullis-llvm");
    let stamp_path = base.join("bpf-linker.stamp");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION}\nnightly: {nightly}\nllvm: {file}\n");
    let bin_exists = bin.exists();
    if bin_exists && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        r.ok(&step, "already built");
        return Ok(());
    }

    r.act(&step, "building (about a minute)");
    // LLVM_PREFIX/lib must hold `libLLVM.so`; the SONAME-named link also lets
    // the binary's rpath find the library when it is not run through rustup.
    let prefix = base.join(version_dir_name(&nightly));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    let target = lib_dir.join(&file);
    for link in ["libLLVM.so", file.as_str()] {
        let link = prefix_lib.join(link);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let feature = format!("llvm-{}", llvm.major);
    let mut install = cmd(
        "cargo",
        ["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features", &feature],
    );
    if bin_exists {
        install.arg("--force");
    }
    // Out of the workspace, so its `.cargo/config.toml` plays no part.
    install.env("LLVM_PREFIX", &prefix).current_dir(&base);
    util::run(&mut install)?;
    fs::write(&stamp_path, &stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    remove_other_dirs(&base, &prefix);
    r.act(&step, "built");
    Ok(())
}

/// Drops the LLVM folders of earlier nightlies (best effort).
fn remove_other_dirs(base: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_lib_name_gives_version_and_major() {
        let lib = parse_llvm_lib_name("libLLVM.so.22.1-rust-1.97.0-nightly").unwrap();
        assert_eq!(lib, LlvmLib { version: "22.1".into(), major: 22 });
        let lib = parse_llvm_lib_name("libLLVM.so.21.1-rust-1.93.0-nightly").unwrap();
        assert_eq!(lib.major, 21);
        assert_eq!(parse_llvm_lib_name("libLLVM.so.23-rust-1.99.0-beta.2").unwrap().major, 23);
    }

    #[test]
    fn other_files_are_not_llvm_libs() {
        for name in [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so",
            "libLLVM.so.22.1",
            "libLLVM.so.x-rust-1.97.0-nightly",
            "libLLVM.so.22.1-rust-",
        ] {
            assert_eq!(parse_llvm_lib_name(name), None, "{name}");
        }
    }

    #[test]
    fn version_dir_names_are_plain() {
        assert_eq!(version_dir_name("rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\n"), "1.97.0-nightly-e50aa6fba-2026-05-19");
    }
}
