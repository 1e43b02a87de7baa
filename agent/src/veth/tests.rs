//! Against the kernel: namespaces of this test's own (`ip netns add`,
//! deleted on drop, panics included), devices created only inside them
//! (`ip -n NS`), never in the namespace the test runs in.

use std::{
    fs::File,
    io::Write as _,
    net::IpAddr,
    os::fd::AsFd as _,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use super::{HostLink, PodLink, Role, Step, VethError, host_veth_by_index, link_exists, pod_links};

/// Root, or a clear skip; under CI (or `PORTCULLIS_REQUIRE_PRIVILEGED`) a
/// privileged test that cannot run is a failure, never a skip (as
/// agent/tests/common does).
pub(super) fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os("PORTCULLIS_REQUIRE_PRIVILEGED").is_some();
    assert!(!required, "privileged test cannot run: not root (CI requires it)");
    // The real stderr: libtest captures `eprintln!`, and a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIP: network namespaces need root");
    false
}

const PREFIX: &str = "pcveth";

/// A named network namespace, deleted on drop.
pub(super) struct Ns {
    pub(super) name: String,
}

impl Ns {
    /// `pcveth<pid>x<n><tag>`: a killed run's leftovers are recognised by
    /// their dead pid and deleted by the next run.
    pub(super) fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let name = format!("{PREFIX}{}x{}{tag}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(&["netns", "add", &name]);
        Self { name }
    }

    /// `ip -n NAME ARGS`.
    pub(super) fn ip(&self, args: &str) {
        let mut full = vec!["-n", &self.name];
        full.extend(args.split_whitespace());
        run(&full);
    }

    pub(super) fn file(&self) -> File {
        File::open(Path::new("/run/netns").join(&self.name)).expect("open the namespace")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(PREFIX).and_then(|rest| rest.split_once('x')).map(|(pid, _)| pid.to_owned());
        if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

const X0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const Y0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x01];
const X1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
const Y1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x02];
const X2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x03];
const Z2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x03];

/// A pod namespace with two veths to the host namespace (x0-y0, indices
/// 11 and 22; x1-y1, both index 30, as when each namespace numbers its
/// own), one to a third namespace (x2-z2), one with both ends in the pod
/// (v0-v1), a bridge with an address, a tap (as in a Kata pod) and
/// `extra_pairs` more veth pairs with both ends in the pod (a link dump
/// over many datagrams). The host has a veth pair of its own. Only device
/// types every node has: veth, bridge, tun (no dummy in some kernels).
struct Topology {
    pod: Ns,
    host: Ns,
    third: Ns,
}

fn topology(extra_pairs: usize) -> Topology {
    let t = Topology { pod: Ns::new("p"), host: Ns::new("h"), third: Ns::new("t") };
    let (pod, host, third) = (&t.pod, &t.host, &t.third);
    let pair = |a: &str, ai: u32, am: [u8; 6], b: &str, bi: u32, bm: [u8; 6], ns: &Ns| {
        let (am, bm, ns) = (mac_text(am), mac_text(bm), &ns.name);
        pod.ip(&format!("link add {a} index {ai} address {am} type veth peer name {b} index {bi} address {bm} netns {ns}"));
    };
    pair("x0", 11, X0_MAC, "y0", 22, Y0_MAC, host);
    pair("x1", 30, X1_MAC, "y1", 30, Y1_MAC, host);
    pair("x2", 40, X2_MAC, "z2", 41, Z2_MAC, third);
    pod.ip("link add v0 type veth peer name v1");
    pod.ip("link add br0 type bridge");
    pod.ip("tuntap add dev t0 mode tap");
    host.ip("link add h0 type veth peer name h1");
    if extra_pairs > 0 {
        let script: String = (0..extra_pairs).map(|i| format!("link add va{i} type veth peer name vb{i}\n")).collect();
        let mut child =
            Command::new("ip").args(["-n", &pod.name, "-batch", "-"]).stdin(Stdio::piped()).spawn().expect("run ip -batch");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write the batch");
        assert!(child.wait().expect("ip -batch").success(), "ip -batch failed");
    }
    // No IPv6 link-local addresses: the addresses below are all there is.
    for dev in ["x0", "x1", "x2", "br0"] {
        pod.ip(&format!("link set {dev} addrgenmode none"));
    }
    pod.ip("addr add 10.99.0.2/24 dev x0");
    pod.ip("addr add fd00:99::2/64 dev x0 nodad");
    pod.ip("addr add 10.99.1.2/24 dev x1");
    pod.ip("addr add 10.99.2.2/24 dev x2");
    pod.ip("addr add 10.99.9.2/24 dev br0");
    for dev in ["lo", "x0", "x1", "x2", "br0", "t0"] {
        pod.ip(&format!("link set {dev} up"));
    }
    for dev in ["y0", "y1"] {
        host.ip(&format!("link set {dev} up"));
    }
    third.ip("link set z2 up");
    t
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().expect("test address")).collect()
}

/// `pod_links`, sorted by pod ifindex, each link's addresses sorted.
fn sorted_links(pod: &Ns, host: &Ns) -> Vec<PodLink> {
    let mut links = pod_links(pod.file(), host.file()).expect("pod_links");
    links.sort_by_key(|l| l.pod_ifindex);
    for l in &mut links {
        l.pod_addrs.sort();
    }
    links
}

fn x0_y0(addrs: &[&str]) -> PodLink {
    PodLink {
        pod_ifindex: 11,
        pod_ifname: "x0".into(),
        pod_mac: X0_MAC,
        host_ifindex: 22,
        host_ifname: "y0".into(),
        host_mac: Y0_MAC,
        pod_addrs: ips(addrs),
    }
}

fn x1_y1(addrs: &[&str]) -> PodLink {
    PodLink {
        pod_ifindex: 30,
        pod_ifname: "x1".into(),
        pod_mac: X1_MAC,
        host_ifindex: 30,
        host_ifname: "y1".into(),
        host_mac: Y1_MAC,
        pod_addrs: ips(addrs),
    }
}

#[test]
fn pod_links_are_the_veths_to_the_host() {
    if !privileged() {
        return;
    }
    let t = topology(150);
    assert_eq!(sorted_links(&t.pod, &t.host), vec![x0_y0(&["10.99.0.2", "fd00:99::2"]), x1_y1(&["10.99.1.2"])]);
    // The same pod against the third namespace: only the veth that leads there.
    let to_third = PodLink {
        pod_ifindex: 40,
        pod_ifname: "x2".into(),
        pod_mac: X2_MAC,
        host_ifindex: 41,
        host_ifname: "z2".into(),
        host_mac: Z2_MAC,
        pod_addrs: ips(&["10.99.2.2"]),
    };
    assert_eq!(sorted_links(&t.pod, &t.third), vec![to_third]);
}

#[test]
fn pod_links_without_addresses_on_the_pod_side() {
    if !privileged() {
        return;
    }
    let t = topology(0);
    // As gVisor's runsc leaves the pod-side device.
    t.pod.ip("addr flush dev x0");
    t.pod.ip("addr flush dev x1");
    assert_eq!(sorted_links(&t.pod, &t.host), vec![x0_y0(&[]), x1_y1(&[])]);
}

#[test]
fn pod_links_is_empty_when_nothing_leads_to_the_host() {
    if !privileged() {
        return;
    }
    let (pod, host, third) = (Ns::new("p"), Ns::new("h"), Ns::new("t"));
    assert_eq!(pod_links(pod.file(), host.file()).expect("only loopback"), vec![]);
    // A veth to elsewhere: the pod namespace gives the host none an id.
    pod.ip(&format!("link add x0 type veth peer name z0 netns {}", third.name));
    pod.ip("link add br0 type bridge");
    assert_eq!(pod_links(pod.file(), host.file()).expect("veth elsewhere"), vec![]);
    // The host as its own pod: its veth pair has both ends there.
    host.ip("link add h0 type veth peer name h1");
    assert_eq!(pod_links(host.file(), host.file()).expect("same namespace"), vec![]);
}

#[test]
fn host_veth_by_index_and_link_exists() {
    if !privileged() {
        return;
    }
    let t = topology(0);
    let host = t.host.file();
    let y0 = host_veth_by_index(&host, 22).expect("y0").expect("y0 is a veth");
    assert_eq!((y0.ifindex, y0.ifname.as_str(), y0.mac, y0.peer_ifindex), (22, "y0", Y0_MAC, Some(11)), "{y0:?}");
    assert!(y0.peer_netnsid.is_some_and(|id| id >= 0), "{y0:?}");
    // h0's peer is in the host namespace too: no IFLA_LINK_NETNSID.
    let h0 = host_veth_by_index(&host, if_index(&t.host, "h0")).expect("h0").expect("h0 is a veth");
    assert_eq!(h0.peer_netnsid, None, "{h0:?}");
    assert_eq!(host_veth_by_index(&host, 1).expect("lo"), None::<HostLink>, "loopback is not a veth");
    assert_eq!(host_veth_by_index(&host, 9999).expect("none"), None);
    assert!(link_exists(&host, 22).expect("y0"));
    assert!(link_exists(&host, 1).expect("lo"));
    assert!(!link_exists(&host, 9999).expect("none"));
    assert!(!link_exists(&host, 0).expect("index 0"));
    // Deleting one end of a veth deletes both.
    t.host.ip("link del y0");
    assert!(!link_exists(&host, 22).expect("y0 gone"));
    assert_eq!(sorted_links(&t.pod, &t.host), vec![x1_y1(&["10.99.1.2"])]);
}

/// From a thread already in the host namespace (as the agent usually is),
/// no thread is spawned to enter it; the answers are the same.
#[test]
fn link_exists_from_inside_the_namespace() {
    if !privileged() {
        return;
    }
    let t = topology(0);
    let host = t.host.file();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(host.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the host namespace");
            assert!(link_exists(&host, 22).expect("y0"));
            assert!(!link_exists(&host, 9999).expect("none"));
            assert_eq!(pod_links(t.pod.file(), &host).expect("pod_links").len(), 2);
        })
        .join()
        .expect("thread");
    });
}

pub(super) fn if_index(ns: &Ns, dev: &str) -> u32 {
    let out = Command::new("ip").args(["-n", &ns.name, "-o", "link", "show", dev]).output().expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().and_then(|i| i.trim().parse().ok()).unwrap_or_else(|| panic!("no index for {dev}: {text}"))
}

/// Not a network namespace: an error naming the namespace and the step.
#[test]
fn a_file_that_is_not_a_namespace_is_an_error() {
    let null = File::open("/dev/null").expect("/dev/null");
    let err = pod_links(&null, &null).expect_err("not a namespace");
    match &err {
        VethError::Io { netns, step: Step::Enter, .. } => assert_eq!(netns.role, Role::Pod),
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with("pod network namespace net:[") && text.contains("setns"), "{text}");
}
