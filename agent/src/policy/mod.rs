//! Policy model, name matching, always-denied ranges, compilation to map entries.
//!
//! Flow: YAML / CRD spec -> `Policy` (validated, `model`) -> optional CLI
//! `Overrides` -> `compile` -> `CompiledPolicy` (what goes into the maps).
//! Everything here is pure logic; the only I/O is reading the policy file and
//! /etc/resolv.conf (`resolvconf`), both replaceable in tests.

pub mod compile;
pub mod model;
pub mod names;
pub mod overrides;
pub mod ranges;
pub mod resolvconf;

pub use compile::{CidrEntry, CompileError, CompiledPolicy, FqdnRule, PortKey, compile};
pub use model::{Destination, DnsPolicy, EgressRule, FieldError, LoadError, Policy, PolicySpec, Port, Protocol, RuleOrigin};
pub use names::{NameError, NameSelector};
pub use overrides::{OverrideError, Overrides};
pub use ranges::{
    DeniedRange, RANGE_NAMES, canonical, canonical_net, deny_reason, is_always_denied, kernel_deny_entries, range_name,
};
pub use resolvconf::{SystemDnsError, system_resolvers};

use thiserror::Error;

/// Any error of this module, for callers that just propagate.
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}
