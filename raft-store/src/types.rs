//! The openraft type configuration and the identifiers Xene's Raft layer is built from.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{ClientRequest, ClientResponse};

/// A server's Raft identity. Node IDs are never reused (DESIGN §5.1).
pub type NodeId = u64;

/// The Raft log index of the entry that made a change; the store's logical clock (DESIGN §4.3).
pub type Revision = u64;

/// What the cluster knows about one member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `HOST:PORT` of the member's gRPC listener (Raft, API).
    pub grpc_addr: String,
    /// `HOST:PORT` of the member's REST listener (webhooks, health, metrics).
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// Xene's openraft type configuration: the application data is a [`ClientRequest`]
    /// and snapshots travel as in-memory byte buffers, sent in chunks by openraft.
    pub TypeConfig:
        D = ClientRequest,
        R = ClientResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle type used across the server.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry as stored.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log identifier (leader id and index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote as persisted.
pub type Vote = openraft::Vote<NodeId>;
/// A membership together with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// openraft's storage error for this configuration.
pub type StorageError = openraft::StorageError<NodeId>;
