//! `portcullis exec` as a process: exit status passes through, bad policies
//! run nothing (exit 2, the field named), and the cgroup, programs, maps and
//! pins are gone after every exit path (normal exit, Ctrl-C, SIGTERM),
//! leftover background processes included.

mod common;

use common::{TempDir, agent_cmd, attached, exec_cgroup_of, run_with_deadline, wait_for};
use portcullis_tests::{ChildGuard, require_root};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const SECS_10: Duration = Duration::from_secs(10);

/// `portcullis exec --dns-server 198.51.100.53 [extra] -- ARGV` (no network
/// use: the command runs in the agent's own cgroup only).
fn exec(dir: &Path, extra: &[&str], argv: &[&str]) -> common::Ran {
    let mut c = agent_cmd();
    c.args(["exec", "--dns-server", "198.51.100.53"]).args(extra).arg("--").args(argv);
    let r = run_with_deadline(dir, c, SECS_10);
    // Whatever happened, the run's cgroup is gone once it has exited.
    let cg = exec_cgroup_of(r.pid);
    assert!(!cg.exists(), "{} left: {r:?}", cg.display());
    r
}

#[test]
fn exit_status_passes_through() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("status");
    for (argv, want) in [
        (vec!["true"], 0),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "exit 42"], 42),
        (vec!["sh", "-c", "kill -KILL $$"], 128 + 9),
        (vec!["sh", "-c", "kill -TERM $$"], 128 + 15),
        (vec!["sh", "-c", "kill -INT $$"], 128 + 2),
        (vec!["portcullis-no-such-command-xyz", "arg"], 127),
    ] {
        let r = exec(tmp.path(), &[], &argv);
        assert_eq!(r.code, want, "{argv:?}: {r:?}");
    }
    let r = exec(tmp.path(), &[], &["portcullis-no-such-command-xyz"]);
    assert!(r.stderr.contains("command not found"), "{r:?}");
    // Output of the command is its own.
    let r = exec(tmp.path(), &[], &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "out\n"), "{r:?}");
    assert!(r.stderr.contains("err\n"), "{r:?}");
}

#[test]
fn bad_policy_exits_2_names_the_field_and_runs_nothing() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("badpolicy");
    let marker = tmp.path().join("marker");
    let touch = ["touch", marker.to_str().unwrap()];
    let cases: [(&str, &str, &[&str]); 8] = [
        ("egress:\n  - toFQDNs: [{matchName: a.test}]\n    portz: [{port: 443}]\n", "unknown field", &["`portz`"]),
        ("egress:\n  - toFQDNs: [{matchName: a.test}]\n    ports: [{port: 443, proto: TCP}]\n", "unknown field", &["`proto`"]),
        ("egress:\n  - toCIDRs: [\"10.0.0.300/32\"]\n", "bad CIDR", &["egress[0].toCIDRs[0]", "10.0.0.300/32"]),
        ("egress:\n  - toCIDRs: [\"192.0.2.0/24\", \"192.0.2.1/24\"]\n", "host bits", &["egress[0].toCIDRs[1]", "host bits"]),
        (
            "egress:\n  - toFQDNs: [{matchName: a.test}]\n    ports: [{port: 70000}]\n",
            "bad port",
            &["egress[0].ports[0].port", "70000"],
        ),
        (
            "egress:\n  - toFQDNs: [{matchName: a.test}]\n  - toFQDNs: [{matchName: b.test}]\n    ports: [{port: 0}]\n",
            "port 0",
            &["egress[1].ports[0].port", "port 0"],
        ),
        (
            "egress:\n  - toFQDNs: [{matchName: a.test}]\n    ports: [{port: 53, protocol: ICMP}]\n",
            "bad protocol",
            &["egress[0].ports[0].protocol", "ICMP"],
        ),
        ("egress:\n  - toFQDNs: [{matchPattern: \"a.*.test\"}]\n", "bad pattern", &["egress[0].toFQDNs[0].matchPattern"]),
    ];
    for (yaml, what, needles) in cases {
        let p = common::write_file(tmp.path(), "policy.yaml", yaml);
        let r = exec(tmp.path(), &["--policy", p.to_str().unwrap()], &touch);
        assert_eq!(r.code, 2, "{what}: {r:?}");
        for n in needles {
            assert!(r.stderr.contains(n), "{what}: stderr lacks {n:?}: {}", r.stderr);
        }
        assert!(!marker.exists(), "{what}: the command ran");
        // check-policy agrees.
        let mut c = agent_cmd();
        c.arg("check-policy").arg(&p);
        let chk = run_with_deadline(tmp.path(), c, SECS_10);
        assert_eq!(chk.code, 2, "check-policy {what}: {chk:?}");
    }
    // Bad flags are policy errors too.
    for (flag, value) in [("--allow-cidr", "300.1.1.1/32"), ("--allow-fqdn", "a..b.test"), ("--dns-server", "198.51.100.53:0")] {
        let r = exec(tmp.path(), &[flag, value], &touch);
        assert_eq!(r.code, 2, "{flag} {value}: {r:?}");
        assert!(r.stderr.contains(flag), "{flag}: {}", r.stderr);
        assert!(!marker.exists(), "{flag} {value}: the command ran");
    }
    // The same command runs with a good policy (so the checks above can fail).
    let good = common::write_file(tmp.path(), "good.yaml", "egress: []\n");
    let r = exec(tmp.path(), &["--policy", good.to_str().unwrap()], &touch);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(marker.exists());
}

/// How the exec run ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The command exits on its own (3) after the test says go.
    Exit,
    Signal(libc::c_int),
}

/// Runs a command that leaves a background daemon, checks what is attached
/// while it runs, ends it, and checks that nothing is left.
fn lifecycle(end: End) {
    let tmp = TempDir::new("lifecycle");
    let (bg, go) = (tmp.path().join("bgpid"), tmp.path().join("go"));
    let script = match end {
        End::Exit => format!(
            "sleep 60 & echo $! > {b}.tmp; mv {b}.tmp {b}; \
             while [ ! -e {g} ]; do sleep 0.01; done; exit 3",
            b = bg.display(),
            g = go.display()
        ),
        End::Signal(_) => format!("sleep 60 & echo $! > {b}.tmp; mv {b}.tmp {b}; exec sleep 30", b = bg.display()),
    };
    let mut c = agent_cmd();
    c.args(["exec", "--dns-server", "198.51.100.53", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut agent = ChildGuard::spawn(c).unwrap();
    let cg = exec_cgroup_of(agent.pid());
    let bg_pid: u32 = wait_for("the command to start", SECS_10, || std::fs::read_to_string(&bg).ok()?.trim().parse().ok());
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == bg_pid.to_string()), "{procs}");
    let att = attached(&cg);
    att.expect_all_hooks();
    let pc_ids = common::pc_prog_ids();
    assert!(att.progs.iter().all(|(id, _, _)| pc_ids.contains(id)), "{att:?}");

    match end {
        End::Exit => std::fs::write(&go, "").unwrap(),
        // SAFETY: kill(2) on our own, not yet reaped child.
        End::Signal(sig) => assert_eq!(unsafe { libc::kill(agent.pid() as i32, sig) }, 0),
    }
    let status = wait_for("exec to exit", SECS_10, || agent.try_wait().unwrap());
    let want = match end {
        End::Exit => 3,
        End::Signal(sig) => 128 + sig,
    };
    assert_eq!(common::shell_code(status), want, "{end:?}");
    att.expect_gone();
    // The background daemon did not outlive the run (unenforced).
    wait_for("the background process to go", Duration::from_secs(2), || {
        let stat = std::fs::read_to_string(format!("/proc/{bg_pid}/stat")).ok();
        // Gone, or a zombie waiting for init to reap it.
        stat.is_none_or(|s| s.rsplit(')').next().unwrap().trim().starts_with('Z')).then_some(())
    });
}

#[test]
fn nothing_left_after_normal_exit() {
    if !require_root() {
        return;
    }
    lifecycle(End::Exit);
}

#[test]
fn nothing_left_after_ctrl_c() {
    if !require_root() {
        return;
    }
    lifecycle(End::Signal(libc::SIGINT));
}

#[test]
fn nothing_left_after_sigterm() {
    if !require_root() {
        return;
    }
    lifecycle(End::Signal(libc::SIGTERM));
}

/// SIGKILL cannot be caught: the run's cgroup stays, and its programs stay
/// attached to it (they belong to the cgroup, not to the dead agent), so a
/// daemon the command left there stays enforced (what arrives at a target
/// is checked by `bypass_exec.rs`). The next `portcullis exec` removes the
/// empty cgroup of a dead run, and with it its programs, and names one that
/// still holds processes (killing them is for whoever started them: here,
/// this test).
#[test]
fn after_sigkill_the_next_run_sweeps_the_cgroup_and_names_leftovers() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("sigkill");
    // Also on panic: the daemon (by PID) and the dead runs' cgroups go.
    struct Cleanup(std::cell::RefCell<(Vec<std::path::PathBuf>, Option<u32>)>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let (dirs, pid) = &*self.0.borrow();
            if let Some(pid) = pid {
                // SAFETY: kill(2) on the daemon this test's run started.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
            for d in dirs {
                for _ in 0..200 {
                    if !d.exists() || std::fs::remove_dir(d).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    let cleanup = Cleanup(Default::default());
    let run = |script: &str| {
        let mut c = agent_cmd();
        c.args(["exec", "--dns-server", "198.51.100.53", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ChildGuard::spawn(c).unwrap()
    };
    let killed = |bg: Option<&Path>| {
        let script = match bg {
            Some(b) => format!("sleep 60 & echo $! > {b}.tmp; mv {b}.tmp {b}; exec sleep 30", b = b.display()),
            None => "exec sleep 30".into(),
        };
        let mut agent = run(&script);
        let cg = exec_cgroup_of(agent.pid());
        cleanup.0.borrow_mut().0.push(cg.clone());
        wait_for("the hooks to be attached", SECS_10, || (cg.exists() && attached(&cg).progs.len() == 11).then_some(()));
        let att = attached(&cg);
        // SAFETY: kill(2) on our own, not yet reaped child.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) }, 0);
        wait_for("exec to die", SECS_10, || agent.try_wait().unwrap());
        assert!(cg.exists(), "nothing could remove {} on SIGKILL", cg.display());
        // Fail closed: the dead agent's programs still enforce there.
        let after = attached(&cg);
        after.expect_all_hooks();
        assert_eq!(after.progs, att.progs, "the same programs stay attached");
        (cg, att)
    };
    // An empty cgroup of a dead run: the next run removes it.
    let (empty, empty_att) = killed(None);
    wait_for("the command to die with its parent", SECS_10, || {
        std::fs::read_to_string(empty.join("cgroup.procs")).ok()?.trim().is_empty().then_some(())
    });
    // One that still holds a daemon: named by the next run, left alone.
    let bg = tmp.path().join("bgpid");
    let (busy, _) = killed(Some(&bg));
    let bg_pid: u32 = wait_for("the daemon's pid", SECS_10, || std::fs::read_to_string(&bg).ok()?.trim().parse().ok());
    cleanup.0.borrow_mut().1 = Some(bg_pid);
    let r = exec(tmp.path(), &[], &["true"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!empty.exists(), "{} was not swept", empty.display());
    // With the cgroup, its programs went (kernel/bpf/cgroup.c `cgroup_bpf_release`).
    wait_for("the swept run's programs to go", SECS_10, || {
        let loaded = common::pc_prog_ids();
        empty_att.progs.iter().all(|(id, _, _)| !loaded.contains(id)).then_some(())
    });
    assert!(busy.exists(), "{} holds a process and must stay", busy.display());
    assert!(r.stderr.contains("still enforced") && r.stderr.contains(&bg_pid.to_string()), "{r:?}");
    // The test started that daemon (through exec): `cleanup` ends it, by
    // PID, and removes the cgroup.
    drop(cleanup);
    assert!(!busy.exists(), "{} left", busy.display());
}
