//! The kernel's allowed connections per endpoint and destination
//! (`agent_common::flow`: the per-CPU slots a connection bumps,
//! `FLOW_DEST_SLOTS`, and the hash their counts move to, `FLOW_DESTS`),
//! summed for the per-minute flow records. The hash is read first, then
//! the slots: a count the kernel moves from a slot to the hash in between
//! is missed by this read (and found by the next), never counted twice.
//! The kernel only adds; the agent forgets an endpoint's entries when its
//! id is given out afresh or it is removed.

use std::{collections::HashMap, sync::Mutex};

use agent_common::{FLOW_DEST_SLOT_ENTRIES, FlowDestKey, FlowDestSlot};
use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};

use crate::util::lock;

pub struct FlowDestMap {
    hash: Mutex<PerCpuHashMap<MapData, FlowDestKey, u64>>,
    slots: Mutex<PerCpuArray<MapData, FlowDestSlot>>,
}

impl FlowDestMap {
    pub fn new(hash: PerCpuHashMap<MapData, FlowDestKey, u64>, slots: PerCpuArray<MapData, FlowDestSlot>) -> Self {
        Self { hash: Mutex::new(hash), slots: Mutex::new(slots) }
    }

    /// Every destination's count, over CPUs, hash and slots.
    pub fn read(&self) -> Vec<(FlowDestKey, u64)> {
        let mut out: HashMap<FlowDestKey, u64> = HashMap::new();
        for (k, per_cpu) in lock(&self.hash).iter().filter_map(Result::ok) {
            *out.entry(k).or_default() += per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        }
        let slots = lock(&self.slots);
        for i in 0..FLOW_DEST_SLOT_ENTRIES {
            let Ok(per_cpu) = slots.get(&i, 0) else { continue };
            for s in per_cpu.iter().filter(|s| s.connections != 0) {
                *out.entry(s.key()).or_default() += s.connections;
            }
        }
        out.into_iter().collect()
    }

    /// Removes endpoint `id`'s counts.
    pub fn forget(&self, id: u32) -> Result<(), MapError> {
        {
            let mut hash = lock(&self.hash);
            let keys: Vec<FlowDestKey> = hash.keys().filter_map(Result::ok).filter(|k| k.endpoint == id).collect();
            for k in keys {
                match hash.remove(&k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut slots = lock(&self.slots);
        for i in 0..FLOW_DEST_SLOT_ENTRIES {
            let per_cpu = slots.get(&i, 0)?;
            if !per_cpu.iter().any(|s| s.endpoint == id && s.connections != 0) {
                continue;
            }
            // A slot the kernel bumps meanwhile on another CPU loses that
            // count: the endpoint is going, or its id is not given out yet.
            let kept: Vec<FlowDestSlot> =
                per_cpu.iter().map(|s| if s.endpoint == id { FlowDestSlot::default() } else { *s }).collect();
            slots.set(i, PerCpuValues::try_from(kept)?, 0)?;
        }
        Ok(())
    }
}
