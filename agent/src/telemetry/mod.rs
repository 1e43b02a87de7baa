//! What the agent tells operators besides the blocked log: Prometheus
//! metrics (`metrics`) and which pods hold capabilities the cgroup hooks
//! cannot contain (`coverage`), and the Kubernetes agent's pods (`k8s`).

pub mod coverage;
pub mod exposition;
pub mod k8s;
pub mod metrics;
