//! The socket hooks' verdict cache against the real kernel, in both of its
//! homes: cgroup storage (`VERDICT_CACHE`, a load any number of attach
//! points share, as in `run`) and the load's own per-CPU array
//! (`SOLO_CACHE`, a load for one attach point, as in `exec`). Each case
//! runs with both: programs attached to a cgroup this test creates, a child process
//! in it (in a fresh network namespace with only `lo`, so an allowed
//! connect ends in ENETUNREACH and never leaves the machine, while a denied
//! one gets EPERM from the hook), and the agent's `State` changing the
//! policy maps underneath.

mod common;

use std::{
    net::IpAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use agent_common::{Hook, Reason, counter_index, ip_words, v4_mapped};
use common::{load_endpoint_with, privileged, test_config};
use portcullis::{
    cgroup::{OwnedCgroup, cgroup2_mount},
    datapath::loader::Attachment,
    enforcer::Caps,
};

const POLICY: &str = r#"
egress:
  - toFQDNs: [{matchName: api.example.test}]
    ports: [{port: 443}]
  - toCIDRs: ["192.0.2.0/24"]
    ports: [{port: 8443}]
dns:
  servers: ["198.51.100.53"]
"#;

/// Connects once to each (IP, port) from inside `cg`, in a new network
/// namespace (an IPv6 or IPv4-mapped address on an AF_INET6 socket, so
/// through `connect6`); returns the errno name of each attempt.
fn connects(cg: &OwnedCgroup, targets: &[(&str, u16)]) -> Vec<String> {
    let script = "import socket, sys, errno\n\
        out = []\n\
        for t in sys.argv[1:]:\n\
        \x20   ip, port = t.split('|')\n\
        \x20   s = socket.socket(socket.AF_INET6 if ':' in ip else socket.AF_INET, socket.SOCK_STREAM)\n\
        \x20   try:\n\
        \x20       s.connect((ip, int(port))); out.append('OK')\n\
        \x20   except OSError as e:\n\
        \x20       out.append(errno.errorcode.get(e.errno, str(e.errno)))\n\
        \x20   s.close()\n\
        print(' '.join(out))\n";
    let args: Vec<String> = targets.iter().map(|(ip, port)| format!("{ip}|{port}")).collect();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {}/cgroup.procs && exec unshare -n python3 -c \"$0\" \"$@\"", cg.path().display()))
        .arg(script)
        .args(&args)
        .output()
        .expect("run the client");
    assert!(out.status.success(), "client failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

fn cached_slots(state: &mut portcullis::enforcer::State, cg: &OwnedCgroup, ip: &str) -> usize {
    let ip: IpAddr = ip.parse().unwrap();
    let IpAddr::V4(v4) = ip else { panic!("IPv4 only") };
    let (hi, lo) = ip_words(&v4_mapped(v4.octets()));
    let per_cpu = state.maps.verdict_cache().read(cg.id()).expect("read VERDICT_CACHE");
    per_cpu
        .iter()
        .flat_map(|c| c.slots.iter().map(move |s| (c.generation, s)))
        .filter(|(g, s)| s.ip_hi == hi && s.ip_lo == lo && s.generation == *g)
        .count()
}

/// Where the cache lives: `SOLO_CACHE` (a load for one attach point) or not.
const HOMES: [bool; 2] = [false, true];

fn setup(tag: &str, caps: Caps, solo: bool) -> (portcullis::datapath::Datapath, portcullis::enforcer::State, u32, OwnedCgroup) {
    let name = format!("pc-test-vcache-{tag}-{solo}-{}", std::process::id());
    let cg = OwnedCgroup::create(&cgroup2_mount().expect("cgroup2"), &name).expect("test cgroup");
    let (mut dp, mut state, ep) = load_endpoint_with(test_config(false), caps, POLICY, cg.id(), solo);
    if let Some(own) = dp.attach(cg.path(), cg.id(), Attachment::Links).expect("attach") {
        state.maps.verdict_cache().set_home(cg.id(), own);
    }
    state.maps.verdict_cache().enable(cg.id(), ep).expect("turn the cache on");
    (dp, state, ep, cg)
}

#[test]
fn a_removed_address_is_refused_at_once_though_its_allowance_was_cached() {
    if !privileged() {
        return;
    }
    for solo in HOMES {
        eprintln!("the cache in {}", if solo { "SOLO_CACHE" } else { "VERDICT_CACHE" });
        let (_dp, mut state, ep, cg) = setup("evict", Caps { ips_per_name: 1, ..Caps::default() }, solo);
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        state.learn(ep, "api.example.test", &[(a, 600)]).expect("learn");
        let r = connects(&cg, &[("203.0.113.5", 443), ("203.0.113.5", 443), ("203.0.113.5", 443), ("203.0.113.5", 80)]);
        assert_eq!(
            r,
            ["ENETUNREACH", "ENETUNREACH", "ENETUNREACH", "EPERM"],
            "allowed three times (hook passed), other port refused"
        );
        let mapped = "::ffff:203.0.113.5";
        assert_eq!(connects(&cg, &[(mapped, 443), (mapped, 443)]), ["ENETUNREACH", "ENETUNREACH"], "connect6, mapped");
        assert!(cached_slots(&mut state, &cg, "203.0.113.5") >= 1, "the allowance was cached");
        let c = state.maps.counters().expect("counters");
        assert_eq!(c[counter_index(Hook::Connect4, Reason::AllowedFqdn) as usize], 3, "hits are counted like misses");
        assert_eq!(c[counter_index(Hook::Connect6, Reason::AllowedFqdn) as usize], 2);

        // The cap of one address per name evicts .5 when .6 is learned.
        let b: IpAddr = "203.0.113.6".parse().unwrap();
        let out = state.learn(ep, "api.example.test", &[(b, 600)]).expect("learn");
        assert_eq!(out.evicted, 1);
        assert_eq!(cached_slots(&mut state, &cg, "203.0.113.5"), 0, "eviction made the cached allowance stale");
        let r = connects(&cg, &[("203.0.113.5", 443), (mapped, 443), ("203.0.113.6", 443)]);
        assert_eq!(r, ["EPERM", "EPERM", "ENETUNREACH"]);
    }
}

#[test]
fn a_cached_allowance_never_outlives_its_ttl_even_with_no_agent_sweeping() {
    if !privileged() {
        return;
    }
    for solo in HOMES {
        eprintln!("the cache in {}", if solo { "SOLO_CACHE" } else { "VERDICT_CACHE" });
        let (_dp, mut state, ep, cg) = setup("ttl", Caps::default(), solo);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        state.learn(ep, "api.example.test", &[(a, 2)]).expect("learn");
        let learned_at = Instant::now();
        assert_eq!(connects(&cg, &[("203.0.113.7", 443), ("203.0.113.7", 443)]), ["ENETUNREACH", "ENETUNREACH"]);
        assert!(cached_slots(&mut state, &cg, "203.0.113.7") >= 1);
        // Nothing removes the entry from LEARNED here (no sweeper runs), and
        // the generation stays: only the slot's own lifetime can end it.
        thread::sleep(Duration::from_millis(2300).saturating_sub(learned_at.elapsed()));
        assert_eq!(connects(&cg, &[("203.0.113.7", 443)]), ["EPERM"], "expired allowance");
    }
}

#[test]
fn cidr_allowances_are_cached_and_a_policy_change_drops_them() {
    if !privileged() {
        return;
    }
    for solo in HOMES {
        eprintln!("the cache in {}", if solo { "SOLO_CACHE" } else { "VERDICT_CACHE" });
        let (_dp, mut state, ep, cg) = setup("cidr", Caps::default(), solo);
        assert_eq!(connects(&cg, &[("192.0.2.9", 8443), ("192.0.2.9", 8443)]), ["ENETUNREACH", "ENETUNREACH"]);
        assert!(cached_slots(&mut state, &cg, "192.0.2.9") >= 1);
        // Removing the rule (as a policy reload does) refuses the next connect.
        state.maps.remove_cidr(ep, v4_mapped([192, 0, 2, 0]), 96 + 24).expect("remove rule");
        assert_eq!(connects(&cg, &[("192.0.2.9", 8443)]), ["EPERM"]);
    }
}

#[test]
fn the_cache_off_decides_the_same() {
    if !privileged() {
        return;
    }
    for solo in HOMES {
        eprintln!("the cache in {}", if solo { "SOLO_CACHE" } else { "VERDICT_CACHE" });
        let (_dp, mut state, ep, cg) = setup("off", Caps::default(), solo);
        state.maps.verdict_cache().disable(cg.id()).expect("off");
        let a: IpAddr = "203.0.113.8".parse().unwrap();
        state.learn(ep, "api.example.test", &[(a, 600)]).expect("learn");
        assert_eq!(
            connects(&cg, &[("203.0.113.8", 443), ("203.0.113.8", 443), ("203.0.113.9", 443)]),
            ["ENETUNREACH", "ENETUNREACH", "EPERM"]
        );
        assert_eq!(cached_slots(&mut state, &cg, "203.0.113.8"), 0, "nothing cached while off");
    }
}

#[test]
fn a_load_for_one_attach_point_refuses_a_second() {
    if !privileged() {
        return;
    }
    let (mut dp, _state, _ep, _cg) = setup("second", Caps::default(), true);
    let other =
        OwnedCgroup::create(&cgroup2_mount().expect("cgroup2"), &format!("pc-test-vcache-second-b-{}", std::process::id()))
            .expect("second cgroup");
    let Err(err) = dp.attach(other.path(), other.id(), Attachment::Links) else {
        panic!("a second attach point would share the first one's cache")
    };
    assert!(err.to_string().contains("one attach point"), "{err}");
}

/// A pin directory of this test under /sys/fs/bpf, removed on drop (also on
/// panic): unpinning detaches what the test attached.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_adopting_agent_turns_the_previous_agents_own_caches_off() {
    use agent_common::VerdictCache;
    use aya::maps::{Map, MapData, PerCpuArray};
    use portcullis::datapath::{Datapath, Pins, verdict_cache::write_solo};

    if !privileged() {
        return;
    }
    let dir = PinDir(format!("/sys/fs/bpf/portcullis-test-{}-vcache-adopt", std::process::id()).into());
    let pins = Pins::open(&dir.0).expect("pins on bpffs");
    let cg = OwnedCgroup::create(&cgroup2_mount().expect("cgroup2"), &format!("pc-test-vcache-adopt-{}", std::process::id()))
        .expect("test cgroup");
    // An agent in node mode: the attach point gets a load of its own and
    // its cache, pinned; turn it on as the agent does.
    let mut first = Datapath::load(test_config(false), Some(&pins), false).expect("load");
    let mut cache = first.attach_pinned(cg.path(), cg.id(), &pins).expect("attach").expect("the attach point's own cache");
    write_solo(&mut cache, 7, 1).expect("turn it on");
    drop((cache, first)); // killed: only the pins are left.

    let pinned = || {
        let data = MapData::from_pin(pins.link(cg.id(), "SOLO_CACHE@1")).expect("pinned cache");
        let cache: PerCpuArray<MapData, VerdictCache> = PerCpuArray::try_from(Map::from_map_data(data).unwrap()).unwrap();
        (0..4u32).flat_map(|hook| cache.get(&hook, 0).unwrap().iter().map(|v| v.endpoint).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    assert!(pinned().iter().all(|&e| e == 7), "on before the restart");
    // The next agent adopts the pins: the old load's cache goes off before
    // any of its own programs is attached.
    let _second = Datapath::load(test_config(false), Some(&pins), false).expect("adopting load");
    assert!(pinned().iter().all(|&e| e == 0), "a previous agent's cache must be off once adopted");
}
