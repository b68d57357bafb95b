//! `xene-server`: a Raft member that serves Xene's API.
//!
//! - [`config`]: flags, environment and config file.
//! - [`server`]: wiring, start-up (bootstrap or join) and ordered shutdown.
//! - [`node`]: this server's place in the cluster: proposals forwarded to the leader, read
//!   barriers, membership; [`proposals`]: the leader's group commit of concurrent writes;
//!   [`leadership`]: whether a quorum confirmed this server's leadership lately.
//! - [`network`], [`peers`]: openraft's network over tonic and the reused peer channels;
//!   [`forwarding`]: a follower's writes to the leader on one stream.
//! - [`objects`]: workflows and pipeline status objects in the store; [`runs`]: runs and
//!   their logs, with the fenced writes of agents; [`secrets`]: write-only secrets.
//! - [`services`]: the gRPC services (`RaftService`, `KvService`, `ClusterService`,
//!   `ObjectService`, `TokenService`, `AgentService`).
//! - [`auth`]: bearer tokens and roles.
//! - [`agents`]: agent and lease records and the leader's live sessions; [`scheduler`]: the
//!   leader-only reconciler that places pipelines and moves leases.
//!   [`batch`]: its guarded writes, many to one proposal.
//! - [`triggers`]: webhooks and cron fires (DESIGN §8).
//! - [`http`]: health, readiness and metrics over REST; [`metrics`]: the Prometheus registry.
//! - [`convert`]: wire ↔ store type conversions; [`error`]: errors and their gRPC status.

pub mod agents;
pub mod auth;
pub mod batch;
pub mod config;
pub mod convert;
pub mod error;
#[cfg(test)]
mod fake_peer;
pub mod forwarding;
pub mod http;
pub mod keys;
pub mod leadership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod objects;
pub mod peers;
pub mod proposals;
pub mod runs;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod services;
pub mod tls;
pub mod triggers;
