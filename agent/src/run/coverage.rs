//! Which capabilities the endpoints' processes hold that the cgroup hooks
//! cannot contain (`crate::coverage`), checked now and every
//! `COVERAGE_EVERY`, for the metrics; a warning when an endpoint's set
//! changes: such a pod is not fully enforced. A thread of its own: reading
//! /proc never waits on the DNS or connect path (the state lock is taken
//! only to store the result). The list of endpoints follows reloads.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing::{info, warn};

use crate::reconcile::Enforced;
use crate::{telemetry::coverage::Coverage, util::lock};

/// How often node mode looks at what the pods' processes hold.
const COVERAGE_EVERY: Duration = Duration::from_secs(5);

/// The endpoints watched: (endpoint id, cgroup, name).
pub type Watched = Arc<Mutex<Vec<(u32, PathBuf, String)>>>;

fn list(enforced: &Enforced) -> Vec<(u32, PathBuf, String)> {
    enforced.values().map(|(id, p)| (*id, p.cgroup.clone(), p.identity.name.clone())).collect()
}

/// Follows a reload.
pub fn update(watched: &Watched, enforced: &Enforced) {
    *lock(watched) = list(enforced);
}

pub fn watch(coverage: Arc<Coverage>, enforced: &Enforced) -> Watched {
    let watched: Watched = Arc::new(Mutex::new(list(enforced)));
    let endpoints = watched.clone();
    let spawned = std::thread::Builder::new().name("coverage".into()).spawn(move || {
        loop {
            let now = lock(&endpoints).clone();
            for (id, cgroup, name) in &now {
                let held = crate::telemetry::coverage::scan(cgroup);
                if !coverage.set(*id, &held) {
                    continue;
                }
                if held.is_empty() {
                    info!(endpoint = %name, "no process holds a capability the cgroup hooks cannot contain");
                } else {
                    let caps: Vec<String> = held.iter().map(|(c, n)| format!("{c} ({n} processes)")).collect();
                    warn!(endpoint = %name, capabilities = %caps.join(", "),
                        "not fully enforced: these processes can send through packet sockets or TUN devices, which cgroup hooks never see");
                }
            }
            std::thread::sleep(COVERAGE_EVERY);
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "could not start the capability watch; pods holding CAP_NET_RAW are not reported");
    }
    watched
}
