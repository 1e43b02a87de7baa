//! Node mode with pins: each attach point gets a load of its own of the four
//! cached socket hooks (`connect4/6`, `sendmsg4/6`), against the pinned
//! maps, so its verdict cache is that load's `SOLO_CACHE`.
//!
//! Why: one program shared by many attach points can only reach a
//! per-attach-point cache through cgroup storage, which costs a
//! `bpf_get_local_storage` call on every connect (a helper call, whose
//! kernel return goes through the SRSO thunk on affected CPUs). A load of
//! its own reaches its cache through a per-CPU array lookup the verifier
//! inlines: no helper call at all. The price is one verification of the
//! four programs per attach point, paid when a pod's cgroup is attached,
//! not per connection (docs/ARCHITECTURE.md "Costs" has both measured).
//!
//! Each load's cache is pinned next to its links (`<cgroup id>-SOLO_CACHE`),
//! so a new agent can turn a previous agent's caches off before it has
//! swapped its own programs in (`disable_pinned`), as it does for
//! `VERDICT_CACHE`. Without pins (`run` without `--pin-path`) there is no
//! way to share the policy maps with a second load, so all attach points
//! share one program and its cgroup storage.

use std::{fs, io, time::Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::CgroupSockAddr,
};
use tracing::debug;

use super::{
    error::LoadError,
    pin::Pins,
    programs::{MAPS, OBJECT, SOLO_CACHE_VERSION, cached, program},
    verdict_cache::{SoloCache, write_solo},
};

/// Pin name of an attach point's cache, next to its links.
const CACHE_PIN: &str = "SOLO_CACHE";

/// Pin name of this release's caches, next to the links.
fn cache_pin() -> String {
    format!("{CACHE_PIN}@{SOLO_CACHE_VERSION}")
}

/// The four cached hooks, loaded for one attach point.
pub struct SoloHooks {
    ebpf: Ebpf,
}

impl SoloHooks {
    /// Loads the object again against the maps pinned under `pins` (the
    /// main load created them), with `SOLO_ATTACH` set; only the four
    /// cached hooks are verified.
    pub fn load(pins: &Pins) -> Result<Self, LoadError> {
        let mut loader = EbpfLoader::new();
        for m in MAPS {
            loader.map_pin_path(m.name, pins.map(m.name));
        }
        loader.override_global("SOLO_ATTACH", &1u32, true);
        let flow_counting = super::programs::flow_counting();
        loader.override_global("FLOW_COUNTING", &flow_counting, true);
        let started = Instant::now();
        let mut ebpf = loader.load(OBJECT)?;
        for p in cached() {
            let name = p.name;
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|source| LoadError::Program { name, source })?;
        }
        debug!(ms = started.elapsed().as_millis() as u64, "loaded the cached socket hooks for an attach point");
        Ok(Self { ebpf })
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, LoadError> {
        program(&mut self.ebpf, name)
    }

    /// The load's cache, pinned for `cgroup_id` in place of a previous
    /// agent's (whose programs the caller has just swapped out).
    pub fn take_cache(&mut self, pins: &Pins, cgroup_id: u64) -> Result<SoloCache, LoadError> {
        let map = self.ebpf.take_map("SOLO_CACHE").ok_or(LoadError::MissingMap("SOLO_CACHE"))?;
        let path = pins.link(cgroup_id, &cache_pin());
        let pin_err = |source: io::Error| LoadError::Pin { what: path.display().to_string(), source };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(e)),
        }
        map.pin(&path).map_err(|e| pin_err(io::Error::other(e)))?;
        SoloCache::try_from(map).map_err(|source| LoadError::Map { name: "SOLO_CACHE", source })
    }
}

/// Turns off every attach point's cache a previous agent pinned: until this
/// agent's programs replace its programs, they must not answer from
/// allowances this agent's view of the policy may have taken away.
pub fn disable_pinned(pins: &Pins) -> Result<usize, LoadError> {
    // Ours, and the previous release's (`<cgroup id>-SOLO_CACHE`, the same
    // value layout).
    let (ours, legacy) = (format!("-{}", cache_pin()), format!("-{CACHE_PIN}"));
    let mut n = 0;
    for path in pins.links().map_err(|source| LoadError::Pin { what: "links".into(), source })? {
        if !path.file_name().is_some_and(|f| {
            let f = f.to_string_lossy();
            f.ends_with(&ours) || f.ends_with(&legacy)
        }) {
            continue;
        }
        let what = path.display().to_string();
        let data = MapData::from_pin(&path).map_err(|e| LoadError::Pin { what: what.clone(), source: io::Error::other(e) })?;
        let map = Map::from_map_data(data).map_err(|source| LoadError::Map { name: "SOLO_CACHE", source })?;
        let mut cache = SoloCache::try_from(map).map_err(|source| LoadError::Map { name: "SOLO_CACHE", source })?;
        write_solo(&mut cache, 0, 0).map_err(|source| LoadError::Map { name: "SOLO_CACHE", source })?;
        n += 1;
    }
    Ok(n)
}
