//! The enforcer: the one owner of endpoints, learned addresses and every
//! kernel map write (Tetragon's sensor manager in spirit). Everything else
//! reaches it through the `Enforcer` handle.

pub mod live;
mod state;

pub use state::*;
