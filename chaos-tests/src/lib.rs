//! Xene's multi-process tests: real servers on loopback, faults injected from outside.
//!
//! - [`harness`]: starts and controls `xene-server` processes.
//! - [`lincheck`]: the linearizability checker for recorded key-value histories.

pub mod harness;
pub mod lincheck;
