//! Thin helpers over `ip` and setns(2).
//!
//! Every command here targets a named namespace (`ip -n NS ...`); nothing is
//! ever added to the root namespace.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `ip netns add NAME` bind-mounts the namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `/etc/netns/NAME`: files here are bind-mounted over `/etc` by `ip netns exec`.
pub fn etc_netns_dir(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

/// Runs `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `ip -n NS ARGS...`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

pub fn add(name: &str) -> Result<()> {
    ip(&["netns", "add", name])
}

/// Removes the named namespace (unmount + unlink). The kernel frees it once
/// no process or open fd is left in it.
pub fn del(name: &str) -> Result<()> {
    ip(&["netns", "del", name])
}

pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Names of all namespaces in `/run/netns`.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Runs `f` on a scoped thread that has joined the network namespace at
/// `path`, returning its result (a panic in `f` is propagated). Only the
/// helper thread switches namespaces; the caller's thread is unaffected.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Writes sysctls (`net.ipv4.ip_forward` style keys) inside the namespace at
/// `path`. /proc/sys/net resolves against the *writing thread's* netns, so no
/// `sysctl` process (and no root-namespace write) is involved.
pub fn sysctls(path: &Path, kv: &[(&str, &str)]) -> Result<()> {
    run_in(path, || -> Result<()> {
        for (key, value) in kv {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&file, value).with_context(|| format!("sysctl {key}={value}"))?;
        }
        Ok(())
    })?
}

/// Deletes namespaces (and their /etc/netns dirs, temp dirs) left behind by
/// benches of test processes that no longer exist, e.g. after a SIGKILL.
/// Only names of our own pattern `pc<pid>x<n>-...` whose `<pid>` is dead are
/// touched; their servers already died with them (PR_SET_PDEATHSIG).
pub fn sweep_stale(tmp_root: &Path) {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(crate::bench::NAME_PREFIX) else {
            return false;
        };
        let Some((pid, tail)) = rest.split_once('x') else {
            return false;
        };
        let counter_ok = tail.split('-').next().is_some_and(|c| c.parse::<u64>().is_ok());
        pid.parse::<u32>().is_ok() && counter_ok && !Path::new("/proc").join(pid).exists()
    };
    for name in list().into_iter().filter(|n| dead(n)) {
        let _ = del(&name);
        let _ = std::fs::remove_dir_all(etc_netns_dir(&name));
    }
    if let Ok(rd) = std::fs::read_dir("/etc/netns") {
        for e in rd.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(tmp_root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(bench) = name.strip_prefix(crate::bench::TMP_DIR_PREFIX)
                && dead(bench)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// An interface's addresses and the default routes through it, to be put
/// back after something took them: runsc moves a pod's `eth0` addresses
/// into gVisor's Sentry and never returns them.
#[derive(Debug)]
pub struct IfSnapshot {
    ns: String,
    ifname: String,
    /// (`ip` family flag, address/prefix length, scope)
    addrs: Vec<(&'static str, String, String)>,
    /// (`ip` family flag, gateway)
    gateways: Vec<(&'static str, String)>,
}

impl IfSnapshot {
    pub fn take(ns: &str, ifname: &str) -> Result<Self> {
        let mut gateways = vec![];
        for fam in ["-4", "-6"] {
            for route in ip_json(ns, &[fam, "route", "show", "default", "dev", ifname])? {
                gateways.extend(route["gateway"].as_str().map(|gw| (fam, gw.to_owned())));
            }
        }
        Ok(Self { ns: ns.to_owned(), ifname: ifname.to_owned(), addrs: if_addrs(ns, ifname)?, gateways })
    }

    /// (`ip` family flag, address/prefix length, scope) of each address.
    pub fn addrs(&self) -> &[(&'static str, String, String)] {
        &self.addrs
    }

    /// (`ip` family flag, gateway) of each default route.
    pub fn gateways(&self) -> &[(&'static str, String)] {
        &self.gateways
    }

    /// Re-adds the missing addresses, then the routes through them.
    pub fn restore(&self) -> Result<()> {
        let now = if_addrs(&self.ns, &self.ifname)?;
        for (fam, cidr, scope) in self.addrs.iter().filter(|a| !now.contains(a)) {
            let mut args = vec![*fam, "addr", "add", cidr, "dev", &self.ifname, "scope", scope];
            // Usable at once (no duplicate address detection), as the bench makes them.
            if *fam == "-6" {
                args.push("nodad");
            }
            ip_in(&self.ns, &args)?;
        }
        for (fam, gw) in &self.gateways {
            ip_in(&self.ns, &[fam, "route", "replace", "default", "via", gw, "dev", &self.ifname])?;
        }
        Ok(())
    }
}

/// `ip -j -n NS ARGS...` as a JSON list.
fn ip_json(ns: &str, args: &[&str]) -> Result<Vec<Value>> {
    let out = Command::new("ip").args(["-j", "-n", ns]).args(args).output().context("run `ip` (iproute2)")?;
    let shown = format!("ip -j -n {ns} {}", args.join(" "));
    ensure!(out.status.success(), "`{shown}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    // `ip -j route show` prints nothing at all when there is no route.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![]);
    }
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("parse `{shown}`"))?;
    v.as_array().cloned().with_context(|| format!("`{shown}` printed no list"))
}

fn if_addrs(ns: &str, ifname: &str) -> Result<Vec<(&'static str, String, String)>> {
    let links = ip_json(ns, &["addr", "show", "dev", ifname])?;
    let infos = links.iter().flat_map(|l| l["addr_info"].as_array().into_iter().flatten());
    let addr = |a: &Value| {
        let fam = match a["family"].as_str()? {
            "inet" => "-4",
            "inet6" => "-6",
            _ => return None,
        };
        Some((fam, format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?), a["scope"].as_str()?.to_owned()))
    };
    Ok(infos.filter_map(addr).collect())
}
