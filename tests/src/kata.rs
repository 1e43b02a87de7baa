//! A Kata-shaped pod without a VM: Kata Containers' "tcfilter" network
//! model (kata-containers docs/design/architecture/networking.md) on a bench
//! pod, with a network namespace as the guest and a relay process as the
//! VMM. A client in the guest sends every frame along a Kata workload's
//! path, so it meets the node's end of the pod's veth as a VM's would.
//!
//! ```text
//!  guest ns            pod ns                                     node ns
//!  eth0 ─veth─ vm0 ⇄ relay ⇄ tap0 ═ mirred ═ eth0 ─────── veth ─────── veth-<pod>
//!  pod's IPs/MAC/    (the VMM)    (tc ingress on each           (the veth programs)
//!  default routes                  redirects to the other's egress)
//! ```
//!
//! What each piece is, and why:
//! - The guest: a namespace whose `eth0` gets the pod's addresses, MAC and
//!   default routes, as the kata-agent configures the VM's NIC from the
//!   pod's `eth0`. The same MAC: the node's neighbour entries and the
//!   frames the agent writes onto the veth (its DNS answers) are addressed
//!   to it. Clients run there ([`KataPod::cmd_in_guest`], with the pod's
//!   `resolv.conf` in `/etc/netns/<guest>/`, as `ip netns exec` binds it).
//! - `vm0`, the other end of the guest's veth: the VM's virtio-net NIC as
//!   the VMM sees it, in the pod namespace where the VMM runs. IPv6 is off
//!   on it (and on `tap0`), so the pod's own kernel never talks into the
//!   guest.
//! - The relay (`clients/kata_relay.py`): the VMM's virtio-net backend. It
//!   holds the tap fd and moves frames, virtio-net header included (so
//!   the guest's TSO/checksum-offloaded frames cross whole), between the tap
//!   and `vm0` (AF_PACKET).
//! - `tap0` and the two mirred filters: Kata's tcfilter model. An ingress
//!   qdisc on `eth0` and on `tap0`, each with a match-all filter that
//!   redirects every frame to the other's egress. `u32 match u32 0 0`, as
//!   Kata's runtime writes it (`matchall` is not built into every kernel).
//! - `eth0`'s global addresses and default routes leave the pod namespace:
//!   the guest owns them (its link-local address stays, unused).
//!
//! The agent must learn the pod's addresses before [`KataPod::start`]
//! moves them (`portcullis exec --veth-pod` reads them off `eth0` when it
//! attaches), as with gVisor, whose runsc takes them when a sandbox starts.
//!
//! Cleanup is RAII, also on panic: the relay stopped by its PID, then the
//! filters, tap and veth deleted, the guest namespace and its `/etc/netns`
//! dir removed, and the pod's addresses and routes given back. The guest
//! namespace is named after the bench's prefix, so the bench's stale sweep
//! removes it after a killed test process.

use crate::guard::ChildGuard;
use crate::netns::{self, IfSnapshot, ip_in};
use crate::{Bench, POD_IF, servers};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

pub const RELAY_PY: &str = include_str!("../clients/kata_relay.py");
/// The tap device Kata creates in the pod namespace.
pub const TAP_IF: &str = "tap0";
/// The pod namespace's end of the guest's veth (the VMM's side of its NIC).
pub const VM_IF: &str = "vm0";

/// Something [`KataPod`] made, undone in reverse order.
#[derive(Debug)]
enum Undo {
    /// The pod's `eth0` addresses and default routes, to give back.
    PodAddrs(IfSnapshot),
    Namespace(String),
    EtcDir(PathBuf),
    Link {
        ns: String,
        dev: String,
    },
    IngressQdisc {
        ns: String,
        dev: String,
    },
}

/// A bench pod in Kata's shape; see the module doc.
#[derive(Debug)]
pub struct KataPod {
    pod_ns: String,
    guest_ns: String,
    relay_log: PathBuf,
    relay: Option<ChildGuard>,
    undo: Vec<Undo>,
}

impl KataPod {
    /// Builds the guest, tap, relay and filters on `pod` and moves its
    /// addresses into the guest. A half-built one is cleaned up.
    pub fn start(bench: &Bench, pod: &str) -> Result<KataPod> {
        let pod_ns = bench.pod_ns_name(pod).to_owned();
        let guest_ns = format!("{}-{pod}-guest", bench.prefix());
        let relay_log = bench.workdir().join(format!("kata-relay-{pod}.log"));
        let mut k = KataPod { pod_ns, guest_ns, relay_log, relay: None, undo: vec![] };
        k.build(bench, pod).with_context(|| format!("building a Kata-shaped pod on {pod}"))?;
        Ok(k)
    }

    fn build(&mut self, bench: &Bench, pod: &str) -> Result<()> {
        let (pod_ns, guest) = (self.pod_ns.clone(), self.guest_ns.clone());
        let (pod_path, guest_path) = (netns::netns_path(&pod_ns), netns::netns_path(&guest));
        let mac = mac_of(&pod_ns, POD_IF)?;
        let snap = IfSnapshot::take(&pod_ns, POD_IF)?;
        let addrs: Vec<_> = snap.addrs().iter().filter(|(_, _, scope)| scope == "global").cloned().collect();
        let gateways = snap.gateways().to_vec();
        self.undo.push(Undo::PodAddrs(snap));

        netns::add(&guest)?;
        self.undo.push(Undo::Namespace(guest.clone()));
        // DAD off (addresses usable at once, as the bench makes them); ICMP
        // "ping" sockets for every group, as container runtimes set it.
        netns::sysctls(
            &guest_path,
            &[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv4.ping_group_range", "0 2147483647"),
            ],
        )?;
        ip_in(&guest, &["link", "set", "lo", "up"])?;
        let etc = netns::etc_netns_dir(&guest);
        std::fs::create_dir_all(&etc).with_context(|| format!("create {}", etc.display()))?;
        self.undo.push(Undo::EtcDir(etc.clone()));
        std::fs::copy(bench.resolv_conf_dir(pod).join("resolv.conf"), etc.join("resolv.conf"))
            .context("the guest's resolv.conf")?;

        ip_in(&pod_ns, &["tuntap", "add", "dev", TAP_IF, "mode", "tap"])?;
        self.undo.push(Undo::Link { ns: pod_ns.clone(), dev: TAP_IF.into() });
        ip_in(&guest, &["link", "add", POD_IF, "address", &mac, "type", "veth", "peer", "name", VM_IF, "netns", &pod_ns])?;
        self.undo.push(Undo::Link { ns: pod_ns.clone(), dev: VM_IF.into() });
        let off = |dev: &str| format!("net.ipv6.conf.{dev}.disable_ipv6");
        netns::sysctls(&pod_path, &[(&off(TAP_IF), "1"), (&off(VM_IF), "1")])?;
        for (ns, dev) in [(&pod_ns, TAP_IF), (&pod_ns, VM_IF), (&guest, POD_IF)] {
            ip_in(ns, &["link", "set", dev, "up"])?;
        }

        let script = bench.workdir().join("kata_relay.py");
        std::fs::write(&script, RELAY_PY)?;
        let mut relay = Command::new("ip");
        relay.args(["netns", "exec", &pod_ns]).arg(servers::python()).arg("-u").arg(&script).args([TAP_IF, VM_IF]);
        self.relay = Some(servers::spawn_until_ready(relay, &self.relay_log, "kata_relay.py")?);

        for (from, to) in [(POD_IF, TAP_IF), (TAP_IF, POD_IF)] {
            tc(&pod_ns, &["qdisc", "add", "dev", from, "ingress"])?;
            self.undo.push(Undo::IngressQdisc { ns: pod_ns.clone(), dev: from.into() });
            let redirect = ["action", "mirred", "egress", "redirect", "dev", to];
            let all = ["filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0"];
            tc(&pod_ns, &[&all[..], &redirect[..]].concat())?;
        }

        for (fam, cidr, _) in &addrs {
            let fam: &str = fam;
            ip_in(&pod_ns, &[fam, "addr", "del", cidr, "dev", POD_IF])?;
            let mut add = vec![fam, "addr", "add", cidr, "dev", POD_IF];
            if fam == "-6" {
                add.push("nodad");
            }
            ip_in(&guest, &add)?;
        }
        for (fam, gw) in &gateways {
            let fam: &str = fam;
            // The IPv4 route went with its address; the IPv6 one stays.
            let _ = ip_in(&pod_ns, &[fam, "route", "del", "default", "via", gw, "dev", POD_IF]);
            ip_in(&guest, &[fam, "route", "add", "default", "via", gw, "dev", POD_IF])?;
        }
        Ok(())
    }

    pub fn guest_ns_name(&self) -> &str {
        &self.guest_ns
    }

    /// `ip netns exec <guest> PROGRAM`: a client in the guest, resolving
    /// through the pod's resolv.conf.
    pub fn cmd_in_guest(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.guest_ns, program]);
        cmd
    }

    /// Frames the tap received from the relay (the guest's) and sent to it
    /// (the mirred ones from `eth0`): proof that traffic took this path.
    pub fn tap_frames(&self) -> Result<(u64, u64)> {
        let out = Command::new("ip").args(["-s", "-j", "-n", &self.pod_ns, "link", "show", "dev", TAP_IF]).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).context("parse `ip -s -j link show`")?;
        let count = |dir: &str| v[0]["stats64"][dir]["packets"].as_u64().with_context(|| format!("no {dir} count: {v}"));
        Ok((count("rx")?, count("tx")?))
    }

    /// The relay's stderr (frames it could not pass on).
    pub fn relay_log(&self) -> String {
        std::fs::read_to_string(&self.relay_log).unwrap_or_default()
    }

    /// Tears everything down now, failing on the first step that did not
    /// work (the rest is still tried).
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first_err = None;
        if let Some(mut relay) = self.relay.take() {
            relay.stop();
        }
        while let Some(u) = self.undo.pop() {
            let r = match &u {
                Undo::IngressQdisc { ns, dev } => tc(ns, &["qdisc", "del", "dev", dev, "ingress"]),
                Undo::Link { ns, dev } => ip_in(ns, &["link", "del", dev]),
                Undo::EtcDir(dir) => std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display())),
                Undo::Namespace(ns) => netns::del(ns),
                Undo::PodAddrs(snap) => snap.restore().context("give the pod its addresses back"),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e.context(format!("undo {u:?}")));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for KataPod {
    fn drop(&mut self) {
        // Never panic here: this may run while unwinding.
        if let Err(e) = self.teardown() {
            eprintln!("kata cleanup: {e:#}");
        }
    }
}

/// The MAC address of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> Result<String> {
    let out = Command::new("ip").args(["-j", "-n", ns, "link", "show", "dev", dev]).output().context("run `ip`")?;
    if !out.status.success() {
        bail!("ip -n {ns} link show {dev}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parse `ip -j link show`")?;
    v[0]["address"].as_str().map(str::to_owned).with_context(|| format!("{dev} in {ns} has no MAC address: {v}"))
}

/// Runs `tc -n NS ARGS...`, failing with its stderr.
pub fn tc(ns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("tc").arg("-n").arg(ns).args(args).output().context("run `tc` (iproute2)")?;
    if !out.status.success() {
        bail!("`tc -n {ns} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
