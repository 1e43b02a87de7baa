//! The agent's side of the socket hooks' verdict cache (`VERDICT_CACHE`;
//! rules in `agent_common::verdict_cache`, kernel side `agent-ebpf/src/cache.rs`).
//!
//! The kernel keeps one value per (attach point, attach type, CPU); the
//! agent writes the whole value for every CPU: the endpoint (0 = cache off),
//! a generation, and empty slots. Writing a new generation is what makes
//! every cached allowance of the endpoint stale, so it follows every change
//! that can take an allowance away.
#![expect(deprecated, reason = "BPF_MAP_TYPE_CGRP_STORAGE is keyed by cgroup only; the cache needs the attach point")]

use std::{collections::HashMap, path::PathBuf};

use tracing::warn;

use agent_common::VerdictCache;
use aya::{
    maps::{CgroupStorageKey, MapData, MapError, PerCpuArray, PerCpuCgroupStorage, PerCpuValues},
    util::nr_cpus,
};

pub use super::programs::CACHED_ATTACH_TYPES;

/// A load's own cache (`SOLO_CACHE`), one value per (cached hook, CPU).
pub type SoloCache = PerCpuArray<MapData, VerdictCache>;

pub struct VerdictCacheMap {
    map: PerCpuCgroupStorage<MapData, VerdictCache>,
    /// Attach points whose programs are a load of their own (`exec`, node
    /// mode with pins: `solo`): their cache is that load's `SOLO_CACHE`,
    /// one value per (hook, CPU), not `map`.
    homes: HashMap<u64, SoloCache>,
    /// endpoint -> (its attach point's cgroup id, generation) while on.
    on: HashMap<u32, (u64, u32)>,
}

impl VerdictCacheMap {
    pub fn new(map: PerCpuCgroupStorage<MapData, VerdictCache>) -> Self {
        Self { map, homes: HashMap::new(), on: HashMap::new() }
    }

    /// The programs at `cgroup_id` are a load of their own whose cache is
    /// `cache` (it starts off; `enable` turns it on).
    pub fn set_home(&mut self, cgroup_id: u64, cache: SoloCache) {
        self.on.retain(|_, (c, _)| *c != cgroup_id);
        self.homes.insert(cgroup_id, cache);
    }

    /// Turns the cache on for the programs attached at `cgroup_id`, whose
    /// every socket belongs to `endpoint` (the caller checked that no other
    /// endpoint lies below it). Fails if the programs are not attached there.
    pub fn enable(&mut self, cgroup_id: u64, endpoint: u32) -> Result<(), MapError> {
        let generation = self.on.get(&endpoint).map_or(1, |(_, g)| g.wrapping_add(1));
        self.write(cgroup_id, endpoint, generation)?;
        self.on.insert(endpoint, (cgroup_id, generation));
        Ok(())
    }

    /// Turns it off at `cgroup_id` (the endpoint goes, or another endpoint
    /// now lies below it). A cgroup without our programs is not an error.
    pub fn disable(&mut self, cgroup_id: u64) -> Result<(), MapError> {
        self.on.retain(|_, (c, _)| *c != cgroup_id);
        match self.write(cgroup_id, 0, 0) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Forgets the attach point `cgroup_id` (its programs are detached):
    /// a load's own cache is closed with it.
    pub fn forget(&mut self, cgroup_id: u64) {
        self.on.retain(|_, (c, _)| *c != cgroup_id);
        self.homes.remove(&cgroup_id);
    }

    /// Makes every cached allowance of `endpoint` stale.
    pub fn invalidate(&mut self, endpoint: u32) -> Result<(), MapError> {
        let Some(&(cgroup_id, generation)) = self.on.get(&endpoint) else { return Ok(()) };
        let generation = generation.wrapping_add(1);
        self.on.insert(endpoint, (cgroup_id, generation));
        self.write(cgroup_id, endpoint, generation)
    }

    pub fn is_on(&self, endpoint: u32) -> bool {
        self.on.contains_key(&endpoint)
    }

    /// Applies `plan` to the attach points: on where it names an endpoint
    /// (unless on already), off elsewhere. Failing to turn it on only costs
    /// speed (logged); failing to turn it off is an error, with its cgroup.
    pub fn refresh(
        &mut self,
        attached: &[(PathBuf, u64)],
        endpoint_of: impl Fn(u64) -> Option<u32>,
    ) -> Result<(), (u64, MapError)> {
        for (cgroup_id, endpoint) in plan(attached, endpoint_of) {
            match endpoint {
                Some(ep) if self.is_on(ep) => {}
                Some(ep) => {
                    if let Err(e) = self.enable(cgroup_id, ep) {
                        warn!(error = %e, cgroup_id, "verdict cache stays off");
                    }
                }
                None => self.disable(cgroup_id).map_err(|e| (cgroup_id, e))?,
            }
        }
        Ok(())
    }

    /// What the kernel holds for `cgroup_id` and the connect4 hook, per CPU.
    pub fn read(&self, cgroup_id: u64) -> Result<Vec<VerdictCache>, MapError> {
        let v = match self.homes.get(&cgroup_id) {
            Some(home) => home.get(&0, 0)?,
            None => self.map.get(CgroupStorageKey::new(cgroup_id, CACHED_ATTACH_TYPES[0]), 0)?,
        };
        Ok(v.iter().copied().collect())
    }

    fn write(&mut self, cgroup_id: u64, endpoint: u32, generation: u32) -> Result<(), MapError> {
        if let Some(home) = self.homes.get_mut(&cgroup_id) {
            return write_solo(home, endpoint, generation);
        }
        for t in CACHED_ATTACH_TYPES {
            self.map.insert(CgroupStorageKey::new(cgroup_id, t), per_cpu(endpoint, generation)?, 0)?;
        }
        Ok(())
    }
}

/// The whole value, the same on every CPU: `endpoint` (0 = off), its
/// `generation`, empty slots.
fn per_cpu(endpoint: u32, generation: u32) -> Result<PerCpuValues<VerdictCache>, MapError> {
    let n = nr_cpus().map_err(|(_, e)| MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e }))?;
    let value = VerdictCache { endpoint, generation, ..VerdictCache::default() };
    PerCpuValues::try_from(vec![value; n])
        .map_err(|e| MapError::SyscallError(aya::sys::SyscallError { call: "per-CPU values", io_error: e }))
}

/// Writes a load's own cache (`SOLO_CACHE`): the value of each cached hook
/// (index = `Hook`: Connect4..Sendmsg6, the order of CACHED_ATTACH_TYPES).
pub fn write_solo(cache: &mut SoloCache, endpoint: u32, generation: u32) -> Result<(), MapError> {
    for hook in 0..CACHED_ATTACH_TYPES.len() as u32 {
        cache.set(hook, per_cpu(endpoint, generation)?, 0)?;
    }
    Ok(())
}

/// Where the cache may be on: for each attach point (cgroup directory,
/// cgroup id), the endpoint whose own cgroup it is, if no other attach point
/// lies below it; else `None` (off). Below a shared attach point, sockets of
/// several endpoints run the same program and share its storage, so a
/// cached allowance of one could answer for another.
pub fn plan(attached: &[(PathBuf, u64)], endpoint_of: impl Fn(u64) -> Option<u32>) -> Vec<(u64, Option<u32>)> {
    attached
        .iter()
        .map(|(path, id)| {
            let nested = attached.iter().any(|(p, other)| other != id && p != path && p.starts_with(path));
            (*id, if nested { None } else { endpoint_of(*id) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_on_only_at_an_endpoints_own_cgroup_with_nothing_below() {
        let a = |p: &str, id| (PathBuf::from(p), id);
        let eps = |id: u64| match id {
            1..=3 => Some(id as u32 * 10),
            _ => None,
        };
        // exec: one endpoint, its own cgroup.
        assert_eq!(plan(&[a("/cg/exec-1", 1)], eps), [(1, Some(10))]);
        // Siblings (run mode, one cgroup per pod): both on.
        assert_eq!(plan(&[a("/cg/pod-a", 1), a("/cg/pod-b", 2)], eps), [(1, Some(10)), (2, Some(20))]);
        // A pod below another endpoint's cgroup: the outer one goes off.
        assert_eq!(
            plan(&[a("/cg/team", 1), a("/cg/team/pod", 2), a("/cg/teamster", 3)], eps),
            [(1, None), (2, Some(20)), (3, Some(30))],
            "only path components count: /cg/teamster is not below /cg/team"
        );
        // An attach point that is not an endpoint's own cgroup: off.
        assert_eq!(plan(&[a("/cg/parent", 9)], eps), [(9, None)]);
    }
}
