//! `FLOW_COUNTERS`, the kernel's per-endpoint flow counts
//! (`agent_common::flow`), summed over CPUs for a scrape. The kernel only
//! adds; the agent zeroes an endpoint's value when it gives a fresh id out
//! (never an id adopted from a previous agent: its counts go on), so a
//! pod's counters start at 0 and never go backwards, across restarts too
//! (the map is pinned).

use std::sync::Mutex;

use agent_common::{FLOW_ENDPOINTS, FlowCounters};
use aya::{
    maps::{MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};

use crate::util::lock;

pub struct FlowCounterMap(Mutex<PerCpuArray<MapData, FlowCounters>>);

impl FlowCounterMap {
    pub fn new(map: PerCpuArray<MapData, FlowCounters>) -> Self {
        Self(Mutex::new(map))
    }

    /// Endpoint `id`'s counts, summed over CPUs; `None` past the map.
    pub fn read(&self, id: u32) -> Option<FlowCounters> {
        if id >= FLOW_ENDPOINTS {
            return None;
        }
        let per_cpu = lock(&self.0).get(&id, 0).ok()?;
        let mut sum = FlowCounters::default();
        for c in per_cpu.iter() {
            for (s, v) in sum.slots.iter_mut().zip(c.slots) {
                *s = s.wrapping_add(v);
            }
        }
        Some(sum)
    }

    /// Zeroes endpoint `id`'s counts (a fresh endpoint id).
    pub fn reset(&self, id: u32) -> Result<(), MapError> {
        if id >= FLOW_ENDPOINTS {
            return Ok(());
        }
        let cpus = nr_cpus().map_err(|(_, e)| MapError::IoError(e))?;
        let zeros = PerCpuValues::try_from(vec![FlowCounters::default(); cpus])?;
        lock(&self.0).set(id, zeros, 0)
    }
}
