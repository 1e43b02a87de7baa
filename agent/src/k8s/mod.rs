//! The Kubernetes node agent (`portcullis agent`): finds this node's pods
//! and their EgressPolicies through the API server and enforces them.

pub mod crd;
pub mod desired;
pub mod podcgroup;
pub mod pods;
pub mod policies;
pub mod select;
