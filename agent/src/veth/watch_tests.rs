//! `LinkWatch` against the kernel, in namespaces of the tests' own (as in
//! tests.rs: deleted on drop, panics included; devices only inside them).

use std::{
    io::Write as _,
    os::fd::AsFd as _,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    tests::{Ns, if_index, privileged},
    watch::{LinkEvent, LinkWatch, PodVethFilter},
};

/// How long an event may take (the brief: within 1 s).
const WITHIN: Duration = Duration::from_secs(1);

/// A running watch thread, stopped and joined on drop.
struct Running {
    rx: Receiver<LinkEvent>,
    pokes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(watch: LinkWatch) -> Self {
        let (tx, rx) = mpsc::channel();
        let pokes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::clone(&pokes);
        let thread = watch
            .spawn(
                tx,
                move || {
                    counter.fetch_add(1, Ordering::Relaxed);
                },
                Arc::clone(&stop),
            )
            .expect("spawn");
        Self { rx, pokes, stop, thread: Some(thread) }
    }

    /// The next event, and how long after `since` it was received.
    fn next(&self, since: Instant) -> (LinkEvent, Duration) {
        match self.rx.recv_timeout(WITHIN) {
            Ok(got) => (got, since.elapsed()),
            Err(e) => panic!("no event within {WITHIN:?}: {e:?}"),
        }
    }

    /// The next event, which must be `want`.
    fn expect(&self, want: &LinkEvent) {
        assert_eq!(&self.next(Instant::now()).0, want);
    }

    /// The next event, which must be `New` for `name` in `ns` (its index is
    /// asked for after the event, so as not to count in the latency), and
    /// how long after `since` it came.
    fn expect_new(&self, ns: &Ns, name: &str, since: Instant) -> Duration {
        let (got, took) = self.next(since);
        assert_eq!(got, new(if_index(ns, name), name));
        took
    }

    /// Nothing more for `wait`.
    fn expect_quiet(&self, wait: Duration) {
        match self.rx.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let stopped = Instant::now();
            let _ = t.join();
            // Not while unwinding: a second panic aborts.
            if !std::thread::panicking() {
                assert!(stopped.elapsed() < Duration::from_secs(1), "the thread took {:?} to stop", stopped.elapsed());
            }
        }
    }
}

fn new(ifindex: u32, name: &str) -> LinkEvent {
    LinkEvent::New { ifindex, name: name.into() }
}

/// Reported on the real stderr: libtest captures `eprintln!`.
fn report(what: &str, took: Duration) {
    let _ = writeln!(std::io::stderr(), "linkwatch latency, {what}: {:.2} ms", took.as_secs_f64() * 1e3);
}

#[test]
fn link_watch_reports_pod_veths_as_they_come_and_go() {
    if !privileged() {
        return;
    }
    let (node, pod, other) = (Ns::new("n"), Ns::new("p"), Ns::new("o"));
    // A pod veth; the bench's uplink (peer elsewhere, not a pod name); a
    // pair with both ends in the node (a pod name, but no pod).
    node.ip(&format!("link add veth-a type veth peer name eth0 netns {}", pod.name));
    node.ip(&format!("link add to-inet type veth peer name to-node netns {}", other.name));
    node.ip("link add veth-x type veth peer name veth-y");
    let a = if_index(&node, "veth-a");
    let watch = LinkWatch::open(node.file().as_fd(), PodVethFilter::default()).expect("open");
    assert_eq!(watch.initial(), [(a, "veth-a".to_owned())]);
    let w = Running::start(watch);

    // Made from the node's side: the node end is the device made last.
    let t = Instant::now();
    node.ip(&format!("link add veth-b type veth peer name eth1 netns {}", pod.name));
    report("ip link add in the node (node end first)", w.expect_new(&node, "veth-b", t));
    let b = if_index(&node, "veth-b");

    // Made from the pod's side, as the CNI plugins do: the node end is the
    // peer, notified before it is tied to the pod end (asked again).
    let t = Instant::now();
    pod.ip(&format!("link add eth2 type veth peer name veth-c netns {}", node.name));
    report("ip link add in the pod (node end as peer)", w.expect_new(&node, "veth-c", t));
    let c = if_index(&node, "veth-c");

    // Up and down, an address, both ends in the node: nothing.
    for cmd in ["link set veth-a up", "link set veth-a down", "link set veth-a up", "addr add 10.98.0.1/24 dev veth-a"] {
        node.ip(cmd);
    }
    node.ip("link set veth-x up");
    node.ip("link set veth-y up");
    pod.ip("link set eth0 up");

    // Renamed into the prefixes (a CNI's temporary name): New then.
    let inet = if_index(&node, "to-inet");
    let t = Instant::now();
    node.ip("link set to-inet name veth-r");
    report("rename into the prefixes", w.expect_new(&node, "veth-r", t));
    assert_eq!(if_index(&node, "veth-r"), inet);

    // Deleted: Gone; made again on the same index: New again.
    let t = Instant::now();
    node.ip("link del veth-b");
    let (got, took) = w.next(t);
    assert_eq!(got, LinkEvent::Gone { ifindex: b });
    report("ip link del", took);
    node.ip(&format!("link add veth-b2 index {b} type veth peer name eth1 netns {}", pod.name));
    w.expect(&new(b, "veth-b2"));

    // Cilium: lxc… and tmp… made in the node, lxc… up, tmp… moved into the
    // pod, renamed, up; the carrier coming on is the notification.
    node.ip("link add lxc1a2b type veth peer name tmp1a2b");
    node.ip("link set lxc1a2b up");
    node.ip(&format!("link set tmp1a2b netns {}", pod.name));
    pod.ip("link set tmp1a2b name eth3");
    let t = Instant::now();
    pod.ip("link set eth3 up");
    report("peer moved to the pod, then up (carrier)", w.expect_new(&node, "lxc1a2b", t));

    // Calico and AWS: both ends made in the pod, one moved to the node.
    pod.ip("link add eth4 type veth peer name cali0a1b");
    let t = Instant::now();
    pod.ip(&format!("link set cali0a1b netns {}", node.name));
    report("moved into the node", w.expect_new(&node, "cali0a1b", t));

    // Moved out of the node: Gone.
    node.ip(&format!("link set veth-c netns {}", other.name));
    w.expect(&LinkEvent::Gone { ifindex: c });

    w.expect_quiet(Duration::from_millis(300));
    assert!(w.pokes.load(Ordering::Relaxed) >= 1);
}

/// A receive buffer too small for two notifications: the kernel drops the
/// rest and fails the next read with ENOBUFS; the listing that follows
/// reports what was lost.
#[test]
fn link_watch_lists_again_after_lost_notifications() {
    if !privileged() {
        return;
    }
    let (node, pod) = (Ns::new("n"), Ns::new("p"));
    node.ip(&format!("link add veth-a type veth peer name eth0 netns {}", pod.name));
    node.ip(&format!("link add veth-b type veth peer name eth1 netns {}", pod.name));
    let (a, b) = (if_index(&node, "veth-a"), if_index(&node, "veth-b"));
    let watch = LinkWatch::open_with(node.file().as_fd(), PodVethFilter::default(), 1).expect("open");
    assert_eq!(watch.initial(), [(a, "veth-a".to_owned()), (b, "veth-b".to_owned())]);
    let overruns = watch.overruns();

    // Before the thread reads anything: far more than the buffer holds.
    const MADE: usize = 40;
    let script: String = (0..MADE).map(|i| format!("link add veth-n{i} type veth peer name e{i} netns {}\n", pod.name)).collect();
    let mut child =
        Command::new("ip").args(["-n", &node.name, "-batch", "-"]).stdin(Stdio::piped()).spawn().expect("run ip -batch");
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write the batch");
    assert!(child.wait().expect("ip -batch").success(), "ip -batch failed");
    node.ip("link del veth-a");

    let w = Running::start(watch);
    let mut news = Vec::new();
    let mut gone = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while news.len() < MADE || gone.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match w.rx.recv_timeout(left) {
            Ok(LinkEvent::New { ifindex, name }) => news.push((ifindex, name)),
            Ok(LinkEvent::Gone { ifindex }) => gone.push(ifindex),
            Err(e) => panic!("{} New and {gone:?} Gone by the deadline: {e:?}", news.len()),
        }
    }
    w.expect_quiet(Duration::from_millis(300));
    assert!(overruns.load(Ordering::Relaxed) >= 1, "the buffer overran");
    assert_eq!(gone, [a]);
    news.sort();
    let mut want: Vec<(u32, String)> =
        (0..MADE).map(|i| (if_index(&node, &format!("veth-n{i}")), format!("veth-n{i}"))).collect();
    want.sort();
    assert_eq!(news, want, "each once");
}
