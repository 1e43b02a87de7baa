//! Changing a running endpoint's policy in place: make before break, so a
//! connection the new policy allows never sees a gap, and everything the
//! new policy takes away is gone from the kernel before the call returns.
//!
//! Established connections keep the allowance they were given at connect
//! (it lives in their socket's storage, `SK_FLOWS`), as with a conntrack
//! entry in Cilium or Calico: a narrowed policy refuses *new* connects,
//! datagrams of unconnected sockets and cached verdicts, not flows already
//! judged. docs/ARCHITECTURE.md "Live changes" says how to cut those too.

use std::sync::Arc;

use agent_common::{EndpointInfo, LearnedKey, LearnedValue};

use super::{Identity, Mode, State, StateError, boot_ns, dns_key, map_err};
use crate::policy::CompiledPolicy;

/// What a policy change did to learned state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// (name, IP) pairs revoked: their names are no longer allowed.
    pub revoked_pairs: usize,
    /// Learned kernel keys removed and written.
    pub keys_removed: usize,
    pub keys_written: usize,
}

impl State {
    /// Gives endpoint `id` a new identity, policy and audit flag.
    ///
    /// Order: the new CIDR entries and resolvers go in first; then learned
    /// addresses follow the new policy (names no longer allowed lose them,
    /// names whose ports changed are re-keyed with their remaining TTL,
    /// names still allowed as before are not touched, so no lookup is
    /// needed again); then what only the old policy had goes; then the
    /// endpoint's flags. Every step that can take an allowance away makes
    /// the endpoint's cached verdicts stale (`PolicyMaps`), and a last
    /// invalidation covers the rest. The DNS side reads the new policy from
    /// the same state, so the next query is judged by it.
    pub fn set_policy(
        &mut self,
        id: u32,
        identity: Identity,
        policy: CompiledPolicy,
        mode: Mode,
    ) -> Result<PolicyChange, StateError> {
        let cgroup_id = self.endpoints.get(&id).ok_or(StateError::UnknownEndpoint(id))?.cgroup_id;
        for e in &policy.cidr_entries {
            self.maps.insert_cidr(id, e.net.addr().octets(), e.net.prefix_len(), e.value).map_err(map_err("CIDRS"))?;
        }
        for s in &policy.dns_servers {
            self.maps.insert_dns_server(dns_key(id, *s)).map_err(map_err("DNS_SERVERS"))?;
        }
        let (revoked_pairs, changes) = self.learned.repolicy(id, |name| policy.ports_for_name(name), boot_ns());
        let out = PolicyChange { revoked_pairs, keys_removed: changes.removes.len(), keys_written: changes.inserts.len() };
        self.apply(changes)?;
        self.relabel_rules(id, &policy)?;
        self.prune_policy_entries(id, &policy)?;
        let was = self.endpoints.get(&id).map(|e| e.mode);
        if was != Some(mode) {
            let info = EndpointInfo { endpoint: id, flags: mode.flags(), generation: 0 };
            self.maps.add_endpoint(cgroup_id, info).map_err(map_err("ENDPOINTS"))?;
            let veths = self.endpoints.get(&id).map(|e| e.veths.clone()).unwrap_or_default();
            for ifindex in veths {
                self.maps.veth().set_flags(ifindex, mode.flags()).map_err(map_err("TC_IFACES"))?;
            }
            self.maps.veths_changed().map_err(map_err("CONFIG"))?;
        }
        self.maps.verdict_cache().invalidate(id).map_err(map_err("VERDICT_CACHE"))?;
        // On the veth, flows the old policy let through: TCP connections go
        // on (as sockets' do), the rest is judged again.
        let veths = self.endpoints.get(&id).map(|e| e.veths.clone()).unwrap_or_default();
        for ifindex in veths {
            self.maps.veth().forget_flows_but_tcp(ifindex).map_err(map_err("TC_FLOWS"))?;
        }
        let ep = self.endpoints.get_mut(&id).ok_or(StateError::UnknownEndpoint(id))?;
        ep.identity = identity;
        ep.policy = Arc::new(policy);
        ep.mode = mode;
        self.version += 1;
        Ok(out)
    }
}

impl State {
    /// Gives every learned key of endpoint `id` the id of the rule that
    /// allows it under `policy` (rule ids follow the policy's order, which a
    /// change may shift), so per-rule counts name the right entry.
    fn relabel_rules(&mut self, id: u32, policy: &CompiledPolicy) -> Result<(), StateError> {
        let mut first = Ok(());
        for (ep, name, ip, _) in self.learned.pairs() {
            if ep != id {
                continue;
            }
            for p in policy.ports_for_name(&name) {
                let key = LearnedKey { endpoint: id, proto: p.proto, _pad: 0, port: p.port.to_be_bytes(), ip };
                let rule = policy.rule_for(&name, p.proto, p.port);
                let Some(expires_ns) = self.learned.key(&key) else { continue };
                if self.maps.learned_rule(&key) != rule
                    && let Err(e) = self.maps.insert_learned(key, LearnedValue { expires_ns, rule, _pad: 0 })
                {
                    first = first.and(Err(map_err("LEARNED")(e)));
                }
            }
        }
        first
    }
}
