//! Xene's gRPC protocol (`xene.v1`): the `.proto` files under `proto/` and the code tonic and
//! prost generate from them. No logic lives here (DESIGN §3).
//!
//! - `RaftService`: internal, server to server (Raft messages, forwarding, join).
//! - `KvService`: the raw revisioned store, admin only.
//! - `ClusterService`: membership and status.
//! - `ObjectService`: workflows and their status objects.
//! - `TokenService`, `AgentService`: tokens, agents joining and their sessions.
//! - `RunService`: runs and their logs; `SecretService`: secrets (write-only values).

/// Generated `xene.v1` messages, clients and servers.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("xene.v1");
}

pub use v1::*;

/// Metadata key of the cluster secret on server-to-server calls.
pub const CLUSTER_SECRET_HEADER: &str = "x-xene-cluster-secret";
/// Metadata key a server sets on `Unavailable` answers: the leader's gRPC address, when known.
pub const LEADER_HINT_HEADER: &str = "x-xene-leader";
