#![allow(dead_code, reason = "each test binary uses a different part of this harness")]

pub mod harness;
pub mod rawbpf;
