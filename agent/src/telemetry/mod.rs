//! What the agent tells operators besides the blocked log: Prometheus
//! metrics (`metrics`, served by `server`), which pods hold capabilities
//! the cgroup hooks cannot contain (`coverage`), and the Kubernetes agent's
//! pods (`k8s`).

pub mod carry;
pub mod coverage;
mod families;
pub mod grace;
pub mod k8s;
pub mod metrics;
pub mod pods;
pub mod server;

pub use families::PodLabels;
