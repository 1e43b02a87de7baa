//! The enforcer: the one owner of endpoints, learned addresses and every
//! kernel map write (Tetragon's sensor manager in spirit). Everything else
//! reaches it through the `Enforcer` handle, whose operations each take the
//! state lock for as long as their map writes need, and no longer.
//!
//! Readers that do slow work never hold that lock: a scrape reads the
//! kernel's counters through their own handle (`KernelCounters`), and a
//! DNS gate reads the client table through its own (`GateClients`); the
//! endpoint views they need are copied out (`EndpointView`: the policy is
//! shared, not copied) and judged outside the lock.

mod flow_counts;
pub mod live;
mod state;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use agent_common::{GateKey, GatePortKey, GatePortValue, GateValue};
use aya::maps::MapError;

pub use self::{
    flow_counts::{DestCount, FlowCounts, RANGE_NAMES},
    state::*,
};
use crate::{
    datapath::{
        maps::{GateClients, KernelCounters},
        verdict_cache::SoloCache,
    },
    handover::LearnedRecord,
    policy::CompiledPolicy,
    util::lock,
};

/// What a reader may know of an endpoint, copied out of the state.
#[derive(Clone, Debug)]
pub struct EndpointView {
    pub id: u32,
    pub cgroup_id: u64,
    pub identity: Identity,
    pub policy: Arc<CompiledPolicy>,
    pub mode: Mode,
}

impl EndpointView {
    fn of(e: &Endpoint) -> Self {
        Self { id: e.id, cgroup_id: e.cgroup_id, identity: e.identity.clone(), policy: e.policy.clone(), mode: e.mode }
    }
}

/// One endpoint's line in a snapshot (metrics).
#[derive(Clone, Debug)]
pub struct EndpointRow {
    pub view: EndpointView,
    /// Its `LEARNED` keys now.
    pub learned: usize,
}

/// The handle: cheap to clone, shared by the DNS paths, the blocked log,
/// the metrics and the agent's lifecycle.
#[derive(Clone)]
pub struct Enforcer {
    state: Arc<Mutex<State>>,
    counters: Arc<KernelCounters>,
    clients: Arc<GateClients>,
}

impl Enforcer {
    pub fn new(state: State) -> Self {
        let counters = state.maps.counter_reader();
        let clients = state.maps.client_reader();
        Self { state: Arc::new(Mutex::new(state)), counters, clients }
    }

    // Endpoints.

    pub fn add_endpoint(
        &self,
        identity: Identity,
        cgroup_id: u64,
        policy: CompiledPolicy,
        mode: Mode,
    ) -> Result<u32, StateError> {
        lock(&self.state).add_endpoint(identity, cgroup_id, policy, mode)
    }

    pub fn set_policy(
        &self,
        id: u32,
        identity: Identity,
        policy: CompiledPolicy,
        mode: Mode,
    ) -> Result<PolicyChange, StateError> {
        lock(&self.state).set_policy(id, identity, policy, mode)
    }

    /// Removes an endpoint and everything it put into the kernel, and
    /// forgets its attach point's own cache (its programs are detached).
    pub fn remove_endpoint(&self, id: u32) -> Result<(), StateError> {
        let mut st = lock(&self.state);
        let Some(cgroup_id) = st.endpoint(id).map(|e| e.cgroup_id) else { return Ok(()) };
        st.remove_endpoint(id)?;
        st.maps.verdict_cache().forget(cgroup_id);
        Ok(())
    }

    /// Judges what crosses the host-side veth `ifindex` by endpoint `id`
    /// (`state/veth.rs`); `addrs`: the pod's own addresses.
    pub fn add_veth(&self, id: u32, ifindex: u32, addrs: &[IpAddr], counts: bool) -> Result<(), StateError> {
        lock(&self.state).add_veth(id, ifindex, addrs, counts)
    }

    /// Where the veth programs hand DNS over TCP (`port` 0: refused).
    pub fn set_veth_tcp_dns(&self, port: u16, mark: u32) -> Result<(), MapError> {
        lock(&self.state).maps.veth().set_tcp_dns(port, mark)
    }

    pub fn remove_veth(&self, id: u32, ifindex: u32) -> Result<(), StateError> {
        lock(&self.state).remove_veth(id, ifindex)
    }

    pub fn endpoint(&self, id: u32) -> Option<EndpointView> {
        lock(&self.state).endpoint(id).map(EndpointView::of)
    }

    /// The endpoint and the DNS name it last resolved to `ip`, for a record.
    pub fn describe(&self, id: u32, ip: IpAddr) -> Option<(EndpointView, Option<String>)> {
        let st = lock(&self.state);
        let e = st.endpoint(id)?;
        Some((EndpointView::of(e), e.name_for(ip).map(str::to_owned)))
    }

    /// Runs `f` on the state under its lock: for rare questions about live
    /// state (`portcullis explain`: a handful of map lookups), never from
    /// the DNS or connect paths' readers.
    pub fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.state))
    }

    /// Every endpoint with its learned-key count, by id.
    pub fn snapshot(&self) -> Vec<EndpointRow> {
        let st = lock(&self.state);
        let mut rows: Vec<EndpointRow> =
            st.endpoints().map(|e| EndpointRow { view: EndpointView::of(e), learned: st.learned_count(e.id) }).collect();
        rows.sort_by_key(|r| r.view.id);
        rows
    }

    // Learning.

    /// Learns one DNS answer (`State::learn`): the map writes are done when
    /// this returns, so the answer may be released.
    pub fn learn(&self, id: u32, qname: &str, addrs: &[(IpAddr, u32)]) -> Result<LearnOutcome, StateError> {
        lock(&self.state).learn(id, qname, addrs)
    }

    /// Drops expired learned entries; returns the learned-state version
    /// after it (for snapshots).
    pub fn expire(&self) -> Result<u64, StateError> {
        let mut st = lock(&self.state);
        st.expire()?;
        Ok(st.version())
    }

    /// Every learned pair, for the next agent or the snapshot: only the
    /// shared pieces are copied under the lock, the records made after.
    pub fn export_learned(&self) -> Vec<LearnedRecord> {
        let pairs = lock(&self.state).learned_pairs();
        to_records(pairs)
    }

    // Adoption (node mode).

    /// After the source of endpoints gave its complete view: drops a
    /// previous agent's endpoints nobody claimed (their cgroup ids are
    /// returned: the caller unpins their links) and its DNS gates (their
    /// ports are returned: they must stay a while), then learns the handed
    /// over pairs again. Returns (unclaimed cgroups, old gate ports,
    /// adopted pairs, orphans).
    pub fn adopt(&self, learned: &[LearnedRecord]) -> Result<(Vec<u64>, Vec<GatePortKey>, usize, usize), StateError> {
        let mut st = lock(&self.state);
        let ports = st.maps.clear_gates().map_err(|source| StateError::Map { map: "GATES", source })?;
        let gone = st.drop_unclaimed()?;
        let n = st.adopt_learned(learned)?;
        Ok((gone, ports, n, st.orphan_count()))
    }

    // The datapath's config.

    /// Lets the kernel hold DNS answers for this agent: someone listens.
    pub fn set_agent_ready(&self) -> Result<(), crate::datapath::LoadError> {
        let mut st = lock(&self.state);
        let mut cfg = st.maps.config();
        cfg.agent_ready = 1;
        st.maps.set_config(&cfg)
    }

    // Verdict caches.

    pub fn set_cache_home(&self, cgroup_id: u64, cache: SoloCache) {
        lock(&self.state).maps.verdict_cache().set_home(cgroup_id, cache);
    }

    /// Plans the verdict caches of `attached` (cgroup dir, cgroup id) again
    /// (`verdict_cache::plan`).
    pub fn refresh_caches(&self, attached: &[(PathBuf, u64)]) -> Result<(), (u64, MapError)> {
        let mut st = lock(&self.state);
        let owner: HashMap<u64, u32> = st.endpoints().map(|e| (e.cgroup_id, e.id)).collect();
        st.maps.verdict_cache().refresh(attached, |id| owner.get(&id).copied())
    }

    // DNS gates.

    /// Publishes a gate: its ports first (the recvmsg hooks need them),
    /// then the entry that sends DNS there.
    pub fn publish_gate(&self, key: GateKey, value: GateValue, ports: &[(GatePortKey, GatePortValue)]) -> Result<(), MapError> {
        let mut st = lock(&self.state);
        for (k, v) in ports {
            st.maps.insert_gate_port(*k, *v)?;
        }
        st.maps.insert_gate(key, value)
    }

    /// Stops sending DNS to a gate (unless a newer agent's replaced it).
    pub fn unpublish_gate(&self, key: &GateKey, value: &GateValue) -> Result<(), MapError> {
        lock(&self.state).maps.remove_gate_if(key, value)
    }

    pub fn remove_gate_ports(&self, ports: &[GatePortKey]) -> Result<(), MapError> {
        let mut st = lock(&self.state);
        let mut first = Ok(());
        for k in ports {
            first = first.and(st.maps.remove_gate_port(k));
        }
        first
    }

    /// The process that last sent a datagram or connected to a gate's port
    /// (no state lock: its own map handle).
    pub fn gate_client(&self, netns_cookie: u64, port: u16, proto: u8) -> Option<u32> {
        self.clients.get(netns_cookie, port, proto)
    }

    // Reads.

    /// The kernel's counters (no state lock: their own map handle).
    pub fn counters(&self) -> Vec<u64> {
        self.counters.read().unwrap_or_default()
    }
}
