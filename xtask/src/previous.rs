//! The previous release of the agent, built from git, for the upgrade test
//! (`tests/tests/restart.rs`: a takeover from its pinned layout under
//! load). Built from a `git archive` of `PREVIOUS_RELEASE` into the
//! workspace's own target dir, so the dependencies are shared and only the
//! agent and its kernel programs are compiled (seconds); the binary is
//! copied out before the current tree is built again over it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// The last release that pinned its maps in the `v3` layout.
pub const PREVIOUS_RELEASE: &str = "7b68568019931a201f237270feddca2c42e726dd";

/// Builds the previous release (once per commit) and returns its binary.
/// Run it before the current tree's build: that build puts the current
/// binary back in `target/debug`.
pub fn build(root: &Path, target_dir: &Path) -> Result<PathBuf> {
    let dir = target_dir.join("previous-release");
    let bin = dir.join(format!("portcullis-{}", &PREVIOUS_RELEASE[..12]));
    if bin.is_file() {
        return Ok(bin);
    }
    let src = dir.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src)?;
    // git archive | tar -x: the tree of that commit, no checkout needed.
    let mut archive = Command::new("git")
        .args(["-C", &root.to_string_lossy(), "archive", "--format=tar", PREVIOUS_RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive (the upgrade test needs the repository's history)")?;
    let out = archive.stdout.take().context("git archive output")?;
    let tar = Command::new("tar").arg("-x").arg("-C").arg(&src).stdin(out).status().context("running tar")?;
    let git = archive.wait()?;
    if !git.success() || !tar.success() {
        bail!("cannot extract the previous release {PREVIOUS_RELEASE} (git {git}, tar {tar}): is the history there?");
    }
    let mut c = Command::new("cargo");
    c.args(["build", "--quiet", "-p", "portcullis"]).current_dir(&src).env("CARGO_TARGET_DIR", target_dir);
    println!("xtask test: building the previous release ({}) for the upgrade test", &PREVIOUS_RELEASE[..12]);
    util::run(&mut c)?;
    std::fs::copy(target_dir.join("debug/portcullis"), &bin).context("copying the previous release's binary")?;
    Ok(bin)
}
