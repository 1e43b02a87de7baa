//! What the agent tells operators besides the blocked log: Prometheus
//! metrics (`metrics`) and which pods hold capabilities the cgroup hooks
//! cannot contain (`coverage`).

pub mod coverage;
pub mod metrics;
