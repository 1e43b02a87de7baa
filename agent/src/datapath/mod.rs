//! The kernel side as seen from user space: the program registry
//! (`programs`), loading and attaching (`loader`, `attach`, `solo`,
//! `pin`), kernel feature probes (`probe`) and typed access to the maps
//! (`maps`, `verdict_cache`).

pub mod attach;
pub mod decide;
mod error;
pub mod flow_counters;
pub mod flow_dests;
pub mod kernel_log;
pub mod loader;
pub mod local_route;
pub mod maps;
pub(crate) mod netlink;
pub mod pin;
pub mod probe;
pub mod programs;
pub mod solo;
pub mod tc;
pub mod verdict_cache;
pub mod veth_maps;

pub use error::LoadError;
pub use loader::Datapath;
pub use maps::PolicyMaps;
pub use pin::Pins;

/// A map of a loaded object, as its aya type (taken once).
pub(crate) fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}
