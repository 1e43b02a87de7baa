//! The Kubernetes node agent (`portcullis agent`).

pub mod crd;
