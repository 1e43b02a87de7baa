//! cgroup -> endpoint resolution.
//!
//! An endpoint (pod or `exec`'d command) is registered by its cgroup id. A
//! socket may live in a descendant cgroup (a pod's container cgroups), so on
//! a miss we walk the ancestors, deepest first, up to `MAX_CGROUP_DEPTH`, and
//! cache the answer (also negative ones) tagged with the config generation.
//! Exempt endpoints and unknown cgroups come back as `Unmanaged`.

use agent_common::{Config, ENDPOINT_F_EXEMPT, EndpointInfo, MAX_CGROUP_DEPTH, Reason};

use crate::maps::{ENDPOINTS, EP_CACHE};

/// A cgroup that is not an enforced endpoint.
#[derive(Clone, Copy)]
pub enum Unmanaged {
    /// Below an exempt endpoint (`ENDPOINT_F_EXEMPT`): passes.
    Exempt,
    /// No endpoint at all: passes only where the config lets unknown
    /// cgroups pass (`Config::unmanaged_allow`; a Kubernetes node denies
    /// them: a pod not classified yet is denied, not open). No config:
    /// denied.
    Unknown,
}

impl Unmanaged {
    /// The verdict and its reason.
    #[inline(always)]
    pub fn verdict(self, cfg: Option<&Config>) -> (Reason, bool) {
        match (self, cfg) {
            (Unmanaged::Exempt, _) => (Reason::AllowedExempt, true),
            (Unmanaged::Unknown, Some(c)) if c.unmanaged_allow != 0 => (Reason::AllowedUnmanaged, true),
            (Unmanaged::Unknown, Some(_)) => (Reason::DeniedDefault, false),
            (Unmanaged::Unknown, None) => (Reason::DeniedInternal, false),
        }
    }
}

#[inline(always)]
fn managed(info: EndpointInfo) -> Result<EndpointInfo, Unmanaged> {
    if info.endpoint == 0 {
        Err(Unmanaged::Unknown)
    } else if info.flags & ENDPOINT_F_EXEMPT != 0 {
        Err(Unmanaged::Exempt)
    } else {
        Ok(info)
    }
}

/// Resolves `cgid`; `ancestor(level)` returns the id of the ancestor at
/// `level` (0 = root) or 0 when `level` is deeper than the cgroup itself.
/// `cfg` is asked only past a direct hit (every map access is a cold
/// cache line on a connect); without a config there is no endpoint.
#[inline(always)]
pub fn resolve<'a>(
    cgid: u64,
    ancestor: impl Fn(i32) -> u64,
    cfg: impl FnOnce() -> Option<&'a Config>,
) -> Result<EndpointInfo, Unmanaged> {
    // SAFETY: values are plain data copied out before use.
    if let Some(info) = unsafe { ENDPOINTS.get(cgid) } {
        return managed(*info);
    }
    let generation = cfg().ok_or(Unmanaged::Unknown)?.generation;
    if let Some(cached) = unsafe { EP_CACHE.get(cgid) }
        && cached.generation == generation
    {
        return managed(*cached);
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
    managed(found)
}
