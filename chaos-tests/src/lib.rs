//! Xene's multi-process tests: real servers on loopback, faults injected from outside.
//!
//! - [`harness`]: starts and controls `xene-server` processes; [`agent_proc`]: `xene-agent`
//!   processes beside them.
//! - [`proxy`]: a TCP proxy per link whose traffic the test passes, delays, blackholes or drops.
//! - [`network`]: a cluster's proxies (every directed peer link, every client link) and the
//!   partitions made of them.
//! - [`nemesis`]: seeded fault injection (kills, pauses, partitions, delays) on leaders and
//!   followers.
//! - [`settings`]: the seed and the short or long variant every chaos scenario reads.
//! - [`report`]: the report each chaos scenario prints at its end.
//! - [`pki`]: certificates for the TLS tests, made at run time.
//! - [`registry`]: a container registry that records the credentials the engine sends.
//! - [`lincheck`]: the linearizability checker for recorded key-value histories.

pub mod agent_proc;
pub mod client;
pub mod harness;
pub mod images;
pub mod lincheck;
pub mod nemesis;
pub mod network;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod report;
pub mod rest;
pub mod settings;
