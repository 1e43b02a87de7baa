//! `portcullis exec` leaves no way out (issue: egress bypasses, classes 3,
//! 5, 6 and 7): enforcement stays until the cgroup is empty, also when the
//! agent is killed; the command runs without the capabilities that reach
//! around the cgroup hooks, cannot leave its cgroup, inherits no socket,
//! and cannot forge itself an inbound peer. What gets out is recorded at
//! the target ("inet") and on the pod's link; each attack also runs once
//! without enforcement to show that it works there.

mod common;

use common::{
    Exec, agent_cmd, exec_cgroup_of, fresh_path, s,
    target::{Recorder, TARGET_PORT, attack_py, unenforced},
    wait_for,
};
use portcullis_tests::{Bench, ChildGuard, require_root, servers::python};
use serde_json::Value;
use std::{os::fd::AsRawFd as _, process::Stdio, time::Duration};

const POLICY: &str = common::API_POLICY;

const META4: &str = "169.254.169.254";
const NONE: Vec<Value> = Vec::new();

/// Both listeners on the metadata address.
fn metadata_listeners(bench: &Bench) -> [Recorder; 2] {
    [Recorder::listen(bench, "udp", META4, TARGET_PORT), Recorder::listen(bench, "tcp", META4, TARGET_PORT)]
}

fn arrivals(recs: &[Recorder]) -> Vec<Value> {
    recs.iter().flat_map(Recorder::arrivals).collect()
}

/// The command leaves a daemon (its own session) that sends datagrams and
/// SYNs to the metadata address as fast as it can for 3 s, and exits at
/// once: the agent's clean-up must end it before enforcement goes.
#[test]
fn a_daemon_left_behind_never_gets_out_while_exec_cleans_up() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let target = metadata_listeners(&bench);
    let attack = attack_py(&bench);
    let port = TARGET_PORT.to_string();
    let py = python();
    let r = Exec::new(&bench).policy(POLICY).run(&[py.to_str().unwrap(), attack.to_str().unwrap(), "daemon", META4, &port, "3"]);
    r.expect_code(0);
    assert!(!exec_cgroup_of(r.ran.pid).exists(), "the run's cgroup outlived it");
    // The daemon would still be sending now, had it survived.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(arrivals(&target), NONE, "the daemon got out");

    // Without enforcement, the same daemon reaches the target.
    let v = unenforced(&bench, &["daemon", META4, &port, "0.3"]);
    assert_eq!(v["parent"], "exited", "{v}");
    let got = wait_for("the unenforced daemon's packets", Duration::from_secs(3), || {
        let a = arrivals(&target);
        (a.iter().any(|x| x["proto"] == "udp") && a.iter().any(|x| x["proto"] == "tcp")).then_some(a)
    });
    assert!(!got.is_empty());
}

/// Removes a dead run's cgroup (its processes killed) also on panic.
struct DeadRun(std::path::PathBuf);

impl Drop for DeadRun {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..300 {
            if !self.0.exists() || std::fs::remove_dir(&self.0).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// SIGKILL of the agent (the workload may run as the same user) leaves the
/// cgroup enforced: its daemon keeps sending to the metadata address and
/// nothing arrives; once it ends, the next run removes the cgroup.
#[test]
fn a_killed_agent_leaves_its_command_enforced() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let target = metadata_listeners(&bench);
    let attack = attack_py(&bench);
    let policy = fresh_path(bench.workdir(), "policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut c = agent_cmd();
    let script = format!("{} {} daemon {META4} {TARGET_PORT} 3 1; exec sleep 30", python().display(), attack.display());
    c.arg("exec").arg("--policy").arg(&policy).arg("--netns").arg(bench.pod_netns_path("pod"));
    c.args(["--", "sh", "-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut agent = ChildGuard::spawn(c).unwrap();
    let cg = exec_cgroup_of(agent.pid());
    let _dead = DeadRun(cg.clone());
    wait_for("the daemon to start", Duration::from_secs(10), || {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).ok()?;
        (procs.lines().count() >= 2).then_some(())
    });
    // SAFETY: kill(2) on our own, not yet reaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) }, 0);
    wait_for("exec to die", Duration::from_secs(10), || agent.try_wait().unwrap());
    // The daemon sends from 1 s after its start for 3 s: all of it after the kill.
    wait_for("the daemon to end", Duration::from_secs(10), || {
        std::fs::read_to_string(cg.join("cgroup.procs")).ok()?.trim().is_empty().then_some(())
    });
    assert_eq!(arrivals(&target), NONE, "the daemon of a killed agent got out");
    // The next run removes the dead run's (now empty) cgroup, and its programs.
    let r = Exec::new(&bench).policy(POLICY).run(&["true"]);
    r.expect_code(0);
    assert!(!cg.exists(), "{} was not swept", cg.display());
}

#[test]
fn the_command_runs_without_the_capabilities_that_leave_enforcement() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    // The TUN device, for the attempt to use it (a kernel may load it only
    // on demand).
    let _ = std::process::Command::new("modprobe").arg("tun").status();
    assert!(std::path::Path::new("/dev/net/tun").exists(), "no /dev/net/tun: the TUN attempt cannot be made");
    let r = Exec::new(&bench).policy(POLICY).steps(&[("caps", "$PY $ATTACK caps")]);
    r.outcome.expect_code(0);
    let v = r.sock("caps");
    for what in ["packet", "raw", "tun", "unshare_net"] {
        assert_eq!(v[what], "EPERM", "{what}: {v}");
    }
    assert_ne!(v["leave_cgroup"], "ok", "{v}");
    let v2 = v["cgroup"].as_str().unwrap().lines().find(|l| l.starts_with("0::")).map(str::to_owned);
    assert_eq!(v2.as_deref(), Some("0::/"), "its own cgroup namespace: {v}");
    // As another user (who cannot write the steps' output files: run as is).
    let (py, attack) = (python(), attack_py(&bench));
    let r = Exec::new(&bench).policy(POLICY).args(&["--user", "nobody"]).run(&[
        py.to_str().unwrap(),
        attack.to_str().unwrap(),
        "caps",
    ]);
    r.expect_code(0);
    let v: Value = serde_json::from_str(r.ran.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(v["uid"], 65534, "{v}");
    assert_eq!(v["packet"], "EPERM", "{v}");
    assert_ne!(v["leave_cgroup"], "ok", "{v}");
    // Without the sandbox (root in the pod's namespace) all of it works.
    let v = unenforced(&bench, &["caps"]);
    for what in ["packet", "raw", "tun", "unshare_net"] {
        assert_eq!(v[what], "ok", "{what}: {v}");
    }
}

/// With CAP_NET_RAW a packet socket sends frames no cgroup hook sees: the
/// reason the command runs without it. Shown at the target: nothing with
/// the default, arrivals with `--keep-caps` and without enforcement.
#[test]
fn packet_sockets_are_closed_to_the_command() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let udp = Recorder::listen(&bench, "udp", META4, TARGET_PORT);
    let mac = bench.cmd_in_node("cat").arg(format!("/sys/class/net/{}/address", bench.node_veth("pod"))).output().unwrap();
    let mac = String::from_utf8(mac.stdout).unwrap().trim().to_owned();
    let src = bench.pod_v4("pod").to_string();
    let cmd = format!("$PY $ATTACK packet-socket eth0 {mac} {src} {META4} {TARGET_PORT} 5");
    let r = Exec::new(&bench).policy(POLICY).steps(&[("packet", &cmd)]);
    r.outcome.expect_code(0);
    assert_eq!(r.sock("packet")["socket"], "EPERM", "{:?}", r.get("packet"));
    assert_eq!(udp.arrivals(), NONE);
    // The gap the default closes: kept, the frames get out.
    let r = Exec::new(&bench).policy(POLICY).arg("--keep-caps").steps(&[("packet", &cmd)]);
    assert_eq!(r.sock("packet")["send"]["sent"], 5, "{:?}", r.get("packet"));
    let kept = udp.arrivals().len();
    assert!(kept >= 5, "with --keep-caps the frames arrive (cgroup hooks never see them): {kept}");
    let args = ["packet-socket", "eth0", &mac, &src, META4, "7777", "2"];
    assert_eq!(unenforced(&bench, &args)["send"]["sent"], 2);
    assert!(udp.arrivals().len() >= kept + 2);
}

/// A datagram forged on the pod's own loopback "from" the metadata address
/// does not make it an inbound peer whose replies may pass (with
/// CAP_NET_RAW kept, the strongest case).
#[test]
fn a_forged_inbound_peer_grants_nothing() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let udp = Recorder::listen(&bench, "udp", META4, TARGET_PORT);
    let cmd = format!("$PY $ATTACK forge-peer {META4} {TARGET_PORT} 5353");
    let r = Exec::new(&bench).policy(POLICY).arg("--keep-caps").steps(&[("forge", &cmd)]);
    r.outcome.expect_code(0);
    let v = r.sock("forge");
    assert_eq!(v["forged_received"], serde_json::json!([META4, TARGET_PORT]), "the forgery reached its socket: {v}");
    assert_eq!(v["send"]["sent"], 0, "{v}");
    assert_eq!(udp.arrivals(), NONE, "a reply to the forged peer got out");
    r.log().expect(META4, TARGET_PORT, &[("reason", s("denied-range")), ("hook", s("skb-egress"))]);
    let v = unenforced(&bench, &["forge-peer", META4, "7777", "5353"]);
    assert_eq!(v["send"]["sent"], 3, "{v}");
    assert!(!udp.arrivals().is_empty());
}

/// No socket reaches the command but its own: not the agent's, and not one
/// its caller passed down (a socket keeps the cgroup it was made in, so
/// its traffic would never be judged).
#[test]
fn the_command_inherits_no_socket() {
    if !require_root() {
        return;
    }
    let bench = Bench::start().unwrap();
    let outside = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = outside.as_raw_fd();
    // SAFETY: clears close-on-exec on our own socket, so children inherit it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let r = Exec::new(&bench).policy(POLICY).steps(&[("fds", "$PY $ATTACK fds")]);
    r.outcome.expect_code(0);
    assert_eq!(r.sock("fds")["sockets"], serde_json::json!([]), "{:?}", r.get("fds"));
    // Without exec, the same command holds it.
    let v = unenforced(&bench, &["fds"]);
    assert!(v["sockets"].as_array().unwrap().iter().any(|s| s[0] == fd), "{v}");
}
