//! Builds the namespaces, veths, addresses and routes, and records everything
//! it creates in a [`Teardown`] so a half-built bench is still cleaned up.
//!
//! ```text
//!  pod ns(s)               node ns (forwarding)           inet ns
//!  eth0 198.18.i.2 ─── veth-<pod> 198.18.i.1
//!                          to-inet 198.19.0.1 ───── to-node 198.19.0.2
//!                          default via inet               lo: API/DNS/deny hosts,
//!                                                          AnyIP ranges, servers
//! ```
//! All veths are created directly inside their namespaces (`ip -n NODE link
//! add ... peer ... netns POD`), so no interface ever exists in the root
//! namespace and interface names need not be globally unique.

use crate::addr;
use crate::guard::ChildGuard;
use crate::netns::{self, ip_in};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Node-side name of the node ↔ inet veth, and its peer inside inet.
pub const NODE_UPLINK_IF: &str = "to-inet";
pub const INET_DOWNLINK_IF: &str = "to-node";
/// Pod-side name of every pod's veth.
pub const POD_IF: &str = "eth0";

/// Everything a bench created, undone in reverse on drop (also on panic).
#[derive(Debug, Default)]
pub struct Teardown {
    /// Stopped first, last-started first.
    pub children: Vec<ChildGuard>,
    /// (namespace, interface) veths deleted explicitly, so the pairs go away
    /// even if some stray process keeps a namespace alive.
    pub links: Vec<(String, String)>,
    pub namespaces: Vec<String>,
    pub etc_dirs: Vec<PathBuf>,
    pub workdir: Option<PathBuf>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        // Never panic here: this may run while unwinding.
        while let Some(mut child) = self.children.pop() {
            child.stop();
        }
        for (ns, link) in self.links.drain(..).rev() {
            let _ = ip_in(&ns, &["link", "del", &link]);
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = netns::del(&ns) {
                eprintln!("bench teardown: {e:#}");
            }
        }
        for dir in self.etc_dirs.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("bench teardown: remove {}: {e}", dir.display());
            }
        }
        if let Some(dir) = self.workdir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates a namespace with `lo` up and IPv6 DAD off (addresses usable at
/// once instead of ~2 s later), recording it for teardown.
pub fn add_namespace(td: &mut Teardown, ns: &str) -> Result<()> {
    netns::add(ns)?;
    td.namespaces.push(ns.to_owned());
    netns::sysctls(&netns::netns_path(ns), &[("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")])?;
    ip_in(ns, &["link", "set", "lo", "up"])
}

/// One point-to-point veth between `a` and `b` with v4 /24 and v6 /64 addresses.
///
/// `a_index` pins the ifindex of the `a` end. Why: the kernel treats a veth
/// carrier change as urgent only if the device's ifindex differs from its
/// peer's (`linkwatch_urgent_event`); two fresh namespaces both hand out
/// ifindex 2, and then IPv6 on that link stays not-ready for up to a second
/// (first SYN lost, 1 s retransmit). A distinct index avoids that.
struct Link<'a> {
    a_ns: &'a str,
    a_if: &'a str,
    a_index: u32,
    a_addrs: (String, String),
    b_ns: &'a str,
    b_if: &'a str,
    b_addrs: (String, String),
}

fn add_link(td: &mut Teardown, l: Link<'_>) -> Result<()> {
    let index = l.a_index.to_string();
    ip_in(l.a_ns, &["link", "add", l.a_if, "index", &index, "type", "veth", "peer", "name", l.b_if, "netns", l.b_ns])
        .with_context(|| format!("veth {}:{} <-> {}:{}", l.a_ns, l.a_if, l.b_ns, l.b_if))?;
    td.links.push((l.a_ns.to_owned(), l.a_if.to_owned()));
    for (ns, ifname, (v4, v6)) in [(l.a_ns, l.a_if, &l.a_addrs), (l.b_ns, l.b_if, &l.b_addrs)] {
        ip_in(ns, &["addr", "add", v4, "dev", ifname])?;
        ip_in(ns, &["-6", "addr", "add", v6, "dev", ifname, "nodad"])?;
        // Up before any `via` route over it, or the kernel rejects the gateway.
        ip_in(ns, &["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Pod `i` (1-based) behind the node: veth, addresses, default routes.
pub fn add_pod(td: &mut Teardown, node_ns: &str, pod_ns: &str, node_if: &str, i: u8) -> Result<()> {
    add_link(
        td,
        Link {
            a_ns: node_ns,
            a_if: node_if,
            a_index: 100 + u32::from(i), // pod end gets 2 (first after lo)
            a_addrs: (format!("{}/24", addr::pod_gw_v4(i)), format!("{}/64", addr::pod_gw_v6(i))),
            b_ns: pod_ns,
            b_if: POD_IF,
            b_addrs: (format!("{}/24", addr::pod_v4(i)), format!("{}/64", addr::pod_v6(i))),
        },
    )?;
    ip_in(pod_ns, &["route", "add", "default", "via", &addr::pod_gw_v4(i).to_string()])?;
    ip_in(pod_ns, &["-6", "route", "add", "default", "via", &addr::pod_gw_v6(i).to_string()])
}

/// node ↔ inet link, forwarding in node (inside node only), and all hosts,
/// AnyIP ranges and return routes in inet.
pub fn add_inet(td: &mut Teardown, node_ns: &str, inet_ns: &str) -> Result<()> {
    add_link(
        td,
        Link {
            a_ns: node_ns,
            a_if: NODE_UPLINK_IF,
            a_index: 10, // inet end gets 2
            a_addrs: (format!("{}/24", addr::NODE_UPLINK_V4), format!("{}/64", addr::NODE_UPLINK_V6)),
            b_ns: inet_ns,
            b_if: INET_DOWNLINK_IF,
            b_addrs: (format!("{}/24", addr::INET_LINK_V4), format!("{}/64", addr::INET_LINK_V6)),
        },
    )?;
    // The node's default route leads into *our* inet namespace, which has no
    // default route itself: anything not hosted there is unreachable.
    ip_in(node_ns, &["route", "add", "default", "via", &addr::INET_LINK_V4.to_string()])?;
    ip_in(node_ns, &["-6", "route", "add", "default", "via", &addr::INET_LINK_V6.to_string()])?;
    netns::sysctls(&netns::netns_path(node_ns), &[("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")])?;

    let (v4net, v4len) = addr::POD_LINKS_V4;
    let (v6net, v6len) = addr::POD_LINKS_V6;
    let (gw4, gw6) = (addr::NODE_UPLINK_V4.to_string(), addr::NODE_UPLINK_V6.to_string());
    ip_in(inet_ns, &["route", "add", &format!("{v4net}/{v4len}"), "via", &gw4])?;
    ip_in(inet_ns, &["-6", "route", "add", &format!("{v6net}/{v6len}"), "via", &gw6])?;

    for host in addr::INET_HOSTS {
        let (fam, cidr, extra) = match host {
            std::net::IpAddr::V4(a) => ("-4", format!("{a}/32"), None),
            std::net::IpAddr::V6(a) => ("-6", format!("{a}/128"), Some("nodad")),
        };
        let mut args = vec![fam, "addr", "add", &cidr, "dev", "lo"];
        args.extend(extra);
        ip_in(inet_ns, &args)?;
    }
    // AnyIP: every address in these ranges is local to inet, so hostd (bound
    // to the wildcard) answers on all of them.
    for (net, len) in addr::ANYIP_V4 {
        ip_in(inet_ns, &["route", "add", "local", &format!("{net}/{len}"), "dev", "lo"])?;
    }
    for (net, len) in addr::ANYIP_V6 {
        ip_in(inet_ns, &["-6", "route", "add", "local", &format!("{net}/{len}"), "dev", "lo"])?;
    }
    Ok(())
}
