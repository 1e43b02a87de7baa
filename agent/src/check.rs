//! `portcullis check-policy`, and the policy loading every command shares:
//! file (optional) + flags -> one validated, compiled policy, or an error
//! that names the field. Nothing runs with a policy that failed to load.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::{
    blocked::display_ip,
    cli::{CheckArgs, PolicyArgs},
    policy::{CompiledPolicy, Overrides, Policy, compile, system_resolvers},
};

/// A policy error: exit status 2, like any other usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadPolicy(pub anyhow::Error);

pub fn load_policy(file: Option<&Path>, args: &PolicyArgs) -> Result<CompiledPolicy, BadPolicy> {
    let inner = || -> Result<CompiledPolicy> {
        let mut policy = match file {
            Some(f) => Policy::from_file(f)?,
            None => Policy::default(),
        };
        let overrides = Overrides::from_flags(&args.allow_fqdn, &args.allow_cidr, &args.dns_server)?;
        policy.apply_overrides(&overrides);
        compile(&policy, system_resolvers).context("compiling the policy")
    };
    inner().map_err(BadPolicy)
}

pub fn run(args: &CheckArgs) -> Result<(), BadPolicy> {
    let file = args.file.as_deref().or(args.policy.policy.as_deref());
    let compiled = load_policy(file, &args.policy)?;
    println!("policy OK");
    println!("trusted resolvers:");
    for s in &compiled.dns_servers {
        println!("  {s}");
    }
    println!("host-name rules:");
    for r in &compiled.fqdn_rules {
        let ports: Vec<String> = r.ports.iter().map(|p| port_label(p.proto, p.port)).collect();
        let names: Vec<String> = r.selectors.iter().map(ToString::to_string).collect();
        println!("  {} on {}", names.join(", "), ports.join(", "));
    }
    println!("kernel CIDR entries (longest prefix wins):");
    for e in &compiled.cidr_entries {
        let net = e.net;
        let shown = match display_ip(net.addr().octets()) {
            std::net::IpAddr::V4(v4) if net.prefix_len() >= 96 => format!("{v4}/{}", net.prefix_len() - 96),
            _ => net.to_string(),
        };
        let kind = match e.value.kind {
            agent_common::CIDR_KIND_ALLOW => "allow",
            agent_common::CIDR_KIND_LOOPBACK => "loopback (own netns only)",
            _ => "always-denied",
        };
        println!("  {shown:<28} {kind}");
    }
    Ok(())
}

fn port_label(proto: u8, port: u16) -> String {
    use agent_common::proto as p;
    let name = match proto {
        p::ANY => return "all ports".into(),
        p::TCP => "TCP",
        p::UDP => "UDP",
        p::SCTP => "SCTP",
        _ => "proto",
    };
    format!("{port}/{name}")
}
