#![no_std]
// Empty library target: lets `cargo` treat the crate as a normal workspace
// member (aya-template); the programs live in the `agent-ebpf` binary.
