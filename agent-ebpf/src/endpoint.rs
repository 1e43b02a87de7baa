//! cgroup -> endpoint resolution.
//!
//! An endpoint (pod or `exec`'d command) is registered by its cgroup id. A
//! socket may live in a descendant cgroup (a pod's container cgroups), so on
//! a miss we walk the ancestors, deepest first, up to `MAX_CGROUP_DEPTH`, and
//! cache the answer (also negative ones) tagged with the config generation.

use agent_common::{Config, EndpointInfo, MAX_CGROUP_DEPTH};

use crate::maps::{ENDPOINTS, EP_CACHE};

/// Resolves `cgid`; `ancestor(level)` returns the id of the ancestor at
/// `level` (0 = root) or 0 when `level` is deeper than the cgroup itself.
/// `cfg` is asked only past a direct hit (every map access is a cold
/// cache line on a connect); without a config there is no endpoint.
#[inline(always)]
pub fn resolve<'a>(cgid: u64, ancestor: impl Fn(i32) -> u64, cfg: impl FnOnce() -> Option<&'a Config>) -> Option<EndpointInfo> {
    // SAFETY: values are plain data copied out before use.
    if let Some(info) = unsafe { ENDPOINTS.get(cgid) } {
        return Some(*info);
    }
    let generation = cfg()?.generation;
    if let Some(cached) = unsafe { EP_CACHE.get(cgid) }
        && cached.generation == generation
    {
        return (cached.endpoint != 0).then_some(*cached);
    }
    let mut found = EndpointInfo { endpoint: 0, flags: 0, generation };
    let mut level = MAX_CGROUP_DEPTH as i32 - 1;
    while level >= 0 {
        let id = ancestor(level);
        if id != 0
            && id != cgid
            && let Some(info) = unsafe { ENDPOINTS.get(id) }
        {
            found.endpoint = info.endpoint;
            found.flags = info.flags;
            break;
        }
        level -= 1;
    }
    // A failed cache insert only costs a later walk; the verdict is unchanged.
    let _ = EP_CACHE.insert(cgid, found, 0);
    (found.endpoint != 0).then_some(found)
}
