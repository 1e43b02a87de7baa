//! `FLOW_DESTS`, the kernel's allowed connections per endpoint and
//! destination (`agent_common::flow::FlowDestKey`), summed over CPUs for
//! the per-minute flow records. The kernel only adds; the agent forgets an
//! endpoint's entries when its id is given out afresh or it is removed.

use std::sync::Mutex;

use agent_common::FlowDestKey;
use aya::maps::{MapData, MapError, PerCpuHashMap};

use crate::util::lock;

pub struct FlowDestMap(Mutex<PerCpuHashMap<MapData, FlowDestKey, u64>>);

impl FlowDestMap {
    pub fn new(map: PerCpuHashMap<MapData, FlowDestKey, u64>) -> Self {
        Self(Mutex::new(map))
    }

    /// Every destination's count, summed over CPUs. An entry the kernel
    /// evicts while it is read is missed (counted again from 0 if it comes
    /// back: the per-minute deltas treat a lower count as a fresh one).
    pub fn read(&self) -> Vec<(FlowDestKey, u64)> {
        let map = lock(&self.0);
        map.iter().filter_map(Result::ok).map(|(k, per_cpu)| (k, per_cpu.iter().copied().fold(0u64, u64::wrapping_add))).collect()
    }

    /// Removes endpoint `id`'s entries.
    pub fn forget(&self, id: u32) -> Result<(), MapError> {
        let mut map = lock(&self.0);
        let keys: Vec<FlowDestKey> = map.keys().filter_map(Result::ok).filter(|k| k.endpoint == id).collect();
        for k in keys {
            match map.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
