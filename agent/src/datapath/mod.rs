//! The kernel side as seen from user space: loading and attaching the
//! programs (`loader`) and typed access to their maps (`maps`).

pub mod attach;
pub mod loader;
pub mod maps;
pub mod pin;
pub mod probe;
pub mod solo;
pub mod verdict_cache;

pub use loader::{Datapath, LoadError};
pub use maps::PolicyMaps;
pub use pin::Pins;
