//! The target side of the bypass tests: listeners in the "internet"
//! namespace that record every datagram or connection reaching a deny
//! target, and a packet log of the pod's link (AF_PACKET on the node's end
//! of its veth). A bypass is proven or refuted here, where the packets
//! would arrive, never from the attacker's own report.

use portcullis_tests::{Bench, ChildGuard, servers};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{fresh_path, read};

pub const LISTEN_PY: &str = include_str!("../../clients/listen.py");
pub const ATTACK_PY: &str = include_str!("../../clients/attack.py");

/// The port the deny targets listen on (hostd does not use it).
pub const TARGET_PORT: u16 = 7777;

/// One recorder; stopped (by PID) on drop.
pub struct Recorder {
    log: PathBuf,
    _child: ChildGuard,
}

impl Recorder {
    fn spawn(bench: &Bench, mut cmd: Command, args: &[&str], what: &str) -> Recorder {
        let script = super::client(bench, "listen.py", LISTEN_PY);
        let log = fresh_path(bench.workdir(), "arrivals.jsonl");
        cmd.arg(&script).arg(&log).args(args);
        let stderr = fresh_path(bench.workdir(), "listen.err");
        let child = servers::spawn_until_ready(cmd, &stderr, what).expect("listener");
        Recorder { log, _child: child }
    }

    /// A UDP (`udp`) or TCP (`tcp`) listener on ADDR:PORT in "inet".
    pub fn listen(bench: &Bench, proto: &str, addr: &str, port: u16) -> Recorder {
        let cmd = bench.cmd_in_inet(servers::python().to_str().unwrap());
        Recorder::spawn(bench, cmd, &[proto, addr, &port.to_string()], "listen.py")
    }

    /// A UDP or TCP listener on ADDR:PORT in the node's namespace (a
    /// service of the node itself, e.g. a node-local DNS cache).
    pub fn listen_in_node(bench: &Bench, proto: &str, addr: &str, port: u16) -> Recorder {
        let cmd = bench.cmd_in_node(servers::python().to_str().unwrap());
        Recorder::spawn(bench, cmd, &[proto, addr, &port.to_string()], "listen.py (node)")
    }

    /// Every IP packet on the pod's link, at the node's end.
    pub fn sniff_pod_link(bench: &Bench, pod: &str) -> Recorder {
        let cmd = bench.cmd_in_node(servers::python().to_str().unwrap());
        Recorder::spawn(bench, cmd, &["sniff", bench.node_veth(pod)], "listen.py sniff")
    }

    /// Every IP packet reaching the "internet": on inet's end of the
    /// node's uplink, past the node and its forwarding, so a packet a veth
    /// program dropped never shows here, whatever its protocol.
    pub fn sniff_inet(bench: &Bench) -> Recorder {
        let cmd = bench.cmd_in_inet(servers::python().to_str().unwrap());
        Recorder::spawn(bench, cmd, &["sniff", portcullis_tests::INET_DOWNLINK_IF], "listen.py sniff")
    }

    /// What arrived so far (after a moment for packets in flight).
    pub fn arrivals(&self) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(300));
        read(&self.log).lines().map(|l| serde_json::from_str(l).expect("arrival JSON")).collect()
    }

    /// Arrivals whose `dst` (sniffer) is `dst`, or all (listeners).
    pub fn to(&self, dst: &str) -> Vec<Value> {
        self.arrivals().into_iter().filter(|a| a.get("dst").is_none_or(|d| d == dst)).collect()
    }
}

/// The attack client, written into the bench's work dir.
pub fn attack_py(bench: &Bench) -> PathBuf {
    super::client(bench, "attack.py", ATTACK_PY)
}

/// Runs `attack.py ARGS` in the pod's namespace with no enforcement at
/// all: the baseline that shows an attack works where nothing stops it.
pub fn unenforced(bench: &Bench, args: &[&str]) -> Value {
    let out = bench
        .cmd_in_pod("pod", servers::python().to_str().unwrap())
        .arg(attack_py(bench))
        .args(args)
        .output()
        .expect("attack.py");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("attack.py output ({e}): {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// ICMP "ping" sockets for every group in the pod, as container runtimes
/// set it (`net.ipv4.ping_group_range`, per namespace, also for IPv6).
pub fn allow_ping_sockets(bench: &Bench) {
    portcullis_tests::netns::sysctls(&bench.pod_netns_path("pod"), &[("net.ipv4.ping_group_range", "0 2147483647")])
        .expect("ping_group_range");
}
