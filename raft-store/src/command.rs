//! The Raft command: what a proposer asks the state machine to do, and what it answers.
//!
//! These types are stored in the Raft log forever, so they are versioned: the log and
//! snapshot encodings carry a format byte (see [`crate::codec`]), enum variants are only
//! ever appended, and a change of meaning gets a new variant rather than a changed one.
//! Everything `apply` needs to be deterministic travels inside the command: the proposer's
//! client identity, request ID and wall-clock timestamp (DESIGN §4.3, §4.4).

use serde::{Deserialize, Serialize};

use crate::types::Revision;

/// Largest key the store accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value the store accepts, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most compares plus operations one transaction may hold.
pub const MAX_TXN_OPS: usize = 1024;
/// Longest client identifier, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// One proposal to the replicated store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Who proposed it; scopes `request_id`. Empty means "no deduplication".
    pub client_id: String,
    /// Unique per client; a retried write reuses it so it applies once (DESIGN §4.4).
    /// Zero means "no deduplication".
    pub request_id: u64,
    /// The proposer's clock in milliseconds since the Unix epoch. `apply` uses it, never its
    /// own clock, to expire idle clients from the deduplication table.
    pub timestamp_ms: u64,
    /// What to do.
    pub command: Command,
}

/// The operations the state machine knows. Append new variants at the end only, and to the
/// shapes it is read back as ([`wire`]): a variant missing there is written but not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "wire::Command")]
pub enum Command {
    /// A compare-then-else transaction over the key space.
    Txn(Txn),
    /// Requests of several clients that the leader grouped into one log entry, applied one
    /// after another, each with its own deduplication, all at the entry's revision. The
    /// proposer never puts two writes of one key in a batch, so a key still changes at most
    /// once per revision (DESIGN §4.3). A batch never holds a batch: decoding refuses one
    /// (see [`wire`]).
    Batch(Vec<ClientRequest>),
}

/// `if all(compare) { success } else { failure }`, applied atomically at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// One condition on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// How a key's field is compared with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// The field of a key a [`Compare`] looks at. An absent key has version, create and mod
/// revision 0 and no value (a value compare against an absent key is false, as in etcd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(u64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Compare {
    /// True when `key` does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::Version(0) }
    }

    /// True when `key` exists.
    pub fn present(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Greater, target: CompareTarget::Version(0) }
    }

    /// True when `key` was last modified at `revision`.
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(revision) }
    }

    /// True when `key` holds exactly `value`.
    pub fn value(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::Value(value.into()) }
    }
}

/// One operation of a transaction branch. Operations run in order and see the writes of
/// the operations before them in the same transaction.
///
/// A write answers with what it replaced only when asked to (the `…Prev` variants, etcd's
/// `prev_kv`): the answer of a put or delete that nobody reads would otherwise carry the old
/// values, and a prefix delete of a run's logs would hold all of them in memory at once.
///
/// The order of the variants is their encoding (postcard writes a variant's index), and
/// stores and peers of earlier builds hold the first four: new variants go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write `value` at `key`, answering with the key's previous version.
    PutPrev {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Read one key, or every key starting with `key` when `prefix` is set, in key order,
    /// at most `limit` of them (0 means no limit).
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        prefix: bool,
        limit: u64,
    },
    /// Remove one key, answering with it as it was.
    DeletePrev {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix`, answering with them as they were.
    DeletePrefixPrev {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Write `value` at `key`.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove one key, answering with how many keys it removed (0 or 1).
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix`, answering with how many it removed.
    DeletePrefix {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
}

impl Op {
    /// The single key it reads or writes, if it names one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::PutPrev { key, .. } | Op::Delete { key } | Op::DeletePrev { key } => Some(key),
            Op::Get { key, prefix: false, .. } => Some(key),
            Op::Get { prefix: true, .. } | Op::DeletePrefix { .. } | Op::DeletePrefixPrev { .. } => None,
        }
    }
}

/// A key as stored, with its revisions (DESIGN §4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation; 1 after the first put.
    pub version: u64,
}

/// What the state machine answers for one log entry. New variants go before `Batch` in
/// [`wire::MemberResponse`] too (which has no `Batch`), or batches' answers stop being read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "wire::Response")]
pub enum ClientResponse {
    /// The entry carried no command (a blank or membership entry).
    Empty,
    /// A transaction ran (one branch or the other).
    Txn(TxnResponse),
    /// The command was refused as a whole and changed nothing. A business answer, not a
    /// storage error.
    Rejected(Rejection),
    /// The request ID was applied before; nothing changed this time. Only the outcome of
    /// the first application is kept, not the values it read.
    Duplicate(DuplicateResponse),
    /// One answer per request of a [`Command::Batch`], in order.
    Batch(Vec<ClientResponse>),
}

/// The remembered outcome of a request applied earlier (DESIGN §4.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateResponse {
    /// The revision at which the request was first applied.
    pub revision: Revision,
    /// Whether its compares held (always true for a transaction without compares).
    pub succeeded: bool,
}

/// One change to one key, as watchers see it (DESIGN §4.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value, version and create
    /// revision 0, and `mod_revision` the revision of the delete.
    pub kv: KeyValue,
}

/// Whether an event wrote or removed its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The revision the transaction ran at (the log index of its entry).
    pub revision: Revision,
    /// Whether every compare held, so the `success` branch ran.
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub results: Vec<OpResult>,
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The key as it was before the put, if it existed and the put asked for it.
    Put { prev: Option<KeyValue> },
    /// The keys read; `more` is set when `limit` cut the list short.
    Get { kvs: Vec<KeyValue>, more: bool },
    /// The keys a `…Prev` delete removed, as they were.
    Delete { deleted: Vec<KeyValue> },
    /// How many keys a delete that did not ask for them removed.
    Removed { count: u64 },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("key of {size} bytes is over the limit of {limit} bytes")]
    KeyTooLarge { size: usize, limit: usize },
    #[error("value of {size} bytes for key {key:?} is over the limit of {limit} bytes")]
    ValueTooLarge { key: String, size: usize, limit: usize },
    #[error("transaction has {count} compares and operations, over the limit of {limit}")]
    TooManyOps { count: usize, limit: usize },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("client id of {size} bytes is over the limit of {limit} bytes")]
    ClientIdTooLong { size: usize, limit: usize },
    #[error("request {request_id} of client {client_id:?} is older than the deduplication window; retry with a new request id")]
    RequestTooOld { client_id: String, request_id: u64 },
}

impl Op {
    /// Bytes of the keys and values it carries.
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Put { key, value } | Op::PutPrev { key, value } => key.len() + value.len(),
            Op::Get { key, .. } | Op::Delete { key } | Op::DeletePrev { key } => key.len(),
            Op::DeletePrefix { prefix } | Op::DeletePrefixPrev { prefix } => prefix.len(),
        }
    }
}

impl Compare {
    /// Bytes of the key and value it carries.
    pub fn payload_len(&self) -> usize {
        match &self.target {
            CompareTarget::Value(value) => self.key.len() + value.len(),
            _ => self.key.len(),
        }
    }
}

impl ClientRequest {
    /// About how many bytes the request takes encoded: its keys and values, plus a few bytes
    /// for each item's framing. Cheap (nothing is encoded); used to size replication batches.
    pub fn approx_len(&self) -> usize {
        let body = match &self.command {
            Command::Txn(txn) => {
                let items = txn.compare.len() + txn.success.len() + txn.failure.len();
                let payload: usize = txn.compare.iter().map(Compare::payload_len).sum::<usize>()
                    + txn.success.iter().chain(&txn.failure).map(Op::payload_len).sum::<usize>();
                payload + 12 * items
            }
            Command::Batch(requests) => requests.iter().map(ClientRequest::approx_len).sum(),
        };
        32 + self.client_id.len() + body
    }
}

impl Txn {
    /// Checks the sizes of everything in the transaction, so that a transaction is either
    /// applied whole or refused before anything changes.
    pub fn check_limits(&self) -> Result<(), Rejection> {
        let count = self.compare.len() + self.success.len() + self.failure.len();
        if count > MAX_TXN_OPS {
            return Err(Rejection::TooManyOps { count, limit: MAX_TXN_OPS });
        }
        for compare in &self.compare {
            check_key(&compare.key, false)?;
            if let CompareTarget::Value(value) = &compare.target {
                check_value(&compare.key, value)?;
            }
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                Op::Put { key, value } | Op::PutPrev { key, value } => {
                    check_key(key, false)?;
                    check_value(key, value)?;
                }
                Op::Get { key, prefix, .. } => check_key(key, *prefix)?,
                Op::Delete { key } | Op::DeletePrev { key } => check_key(key, false)?,
                Op::DeletePrefix { prefix } | Op::DeletePrefixPrev { prefix } => check_key(prefix, true)?,
            }
        }
        Ok(())
    }
}

/// The shapes [`Command`] and [`ClientResponse`] are read back as: the same encoding, with a
/// batch's members read as types that cannot hold another batch, so that decoding recurses one
/// level at most whatever the bytes say. Read as the types themselves, 1,000 batches nested in
/// 5 KB from a peer overflowed the decoder's stack and aborted the server.
mod wire {
    use serde::Deserialize;

    use super::{DuplicateResponse, Rejection, Txn, TxnResponse};

    #[derive(Deserialize)]
    pub(super) enum Command {
        Txn(Txn),
        Batch(Vec<Member>),
    }

    #[derive(Deserialize)]
    pub(super) struct Member {
        client_id: String,
        request_id: u64,
        timestamp_ms: u64,
        command: MemberCommand,
    }

    /// [`Command`] without `Batch`: its first variant, so encoded alike.
    #[derive(Deserialize)]
    enum MemberCommand {
        Txn(Txn),
    }

    impl From<Command> for super::Command {
        fn from(command: Command) -> Self {
            match command {
                Command::Txn(txn) => super::Command::Txn(txn),
                Command::Batch(members) => super::Command::Batch(
                    members
                        .into_iter()
                        .map(|member| {
                            let MemberCommand::Txn(txn) = member.command;
                            super::ClientRequest {
                                client_id: member.client_id,
                                request_id: member.request_id,
                                timestamp_ms: member.timestamp_ms,
                                command: super::Command::Txn(txn),
                            }
                        })
                        .collect(),
                ),
            }
        }
    }

    #[derive(Deserialize)]
    pub(super) enum Response {
        Empty,
        Txn(TxnResponse),
        Rejected(Rejection),
        Duplicate(DuplicateResponse),
        Batch(Vec<MemberResponse>),
    }

    /// [`Response`] without `Batch`, its last variant, so encoded alike.
    #[derive(Deserialize)]
    pub(super) enum MemberResponse {
        Empty,
        Txn(TxnResponse),
        Rejected(Rejection),
        Duplicate(DuplicateResponse),
    }

    impl From<MemberResponse> for super::ClientResponse {
        fn from(response: MemberResponse) -> Self {
            match response {
                MemberResponse::Empty => super::ClientResponse::Empty,
                MemberResponse::Txn(txn) => super::ClientResponse::Txn(txn),
                MemberResponse::Rejected(rejection) => super::ClientResponse::Rejected(rejection),
                MemberResponse::Duplicate(duplicate) => super::ClientResponse::Duplicate(duplicate),
            }
        }
    }

    impl From<Response> for super::ClientResponse {
        fn from(response: Response) -> Self {
            match response {
                Response::Empty => MemberResponse::Empty.into(),
                Response::Txn(txn) => MemberResponse::Txn(txn).into(),
                Response::Rejected(rejection) => MemberResponse::Rejected(rejection).into(),
                Response::Duplicate(duplicate) => MemberResponse::Duplicate(duplicate).into(),
                Response::Batch(members) => super::ClientResponse::Batch(members.into_iter().map(Into::into).collect()),
            }
        }
    }
}

fn check_key(key: &[u8], may_be_empty: bool) -> Result<(), Rejection> {
    if key.is_empty() && !may_be_empty {
        return Err(Rejection::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Rejection::KeyTooLarge { size: key.len(), limit: MAX_KEY_BYTES });
    }
    Ok(())
}

fn check_value(key: &[u8], value: &[u8]) -> Result<(), Rejection> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Rejection::ValueTooLarge {
            key: String::from_utf8_lossy(key).into_owned(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The types as they were before their bytes were written as byte strings: what is on
    /// disk and in flight from earlier builds.
    mod before {
        use super::Revision;
        use serde::Serialize;

        #[derive(Serialize)]
        pub struct KeyValue {
            pub key: Vec<u8>,
            pub value: Vec<u8>,
            pub create_revision: Revision,
            pub mod_revision: Revision,
            pub version: u64,
        }

        #[derive(Serialize)]
        pub enum Op {
            Put { key: Vec<u8>, value: Vec<u8> },
            Get { key: Vec<u8>, prefix: bool, limit: u64 },
            Delete { key: Vec<u8> },
            DeletePrefix { prefix: Vec<u8> },
        }

        #[derive(Serialize)]
        pub enum CompareTarget {
            Version(u64),
            CreateRevision(Revision),
            ModRevision(Revision),
            Value(Vec<u8>),
        }
    }

    /// A batch and its answer read back as written; a batch in a batch, which no proposer
    /// makes, is refused, and so are thousands of them nested in a few bytes (which
    /// overflowed the stack when batches were read as batches).
    #[test]
    fn batches_read_back_one_level_deep_and_nested_ones_are_refused() {
        let request = |id: u64, command: Command| ClientRequest {
            client_id: format!("c{id}"),
            request_id: id,
            timestamp_ms: 7,
            command,
        };
        let put = |key: &str| {
            Command::Txn(Txn {
                compare: vec![Compare::absent(key.as_bytes().to_vec())],
                success: vec![Op::Put { key: key.as_bytes().to_vec(), value: b"v".to_vec() }],
                failure: vec![],
            })
        };
        let batch = request(0, Command::Batch(vec![request(1, put("/a")), request(2, put("/b"))]));
        let bytes = crate::codec::encode(&batch);
        assert_eq!(crate::codec::decode::<ClientRequest>("request", &bytes).ok(), Some(batch.clone()));
        let answer = ClientResponse::Batch(vec![
            ClientResponse::Empty,
            ClientResponse::Rejected(Rejection::EmptyKey),
            ClientResponse::Duplicate(DuplicateResponse { revision: 4, succeeded: true }),
            ClientResponse::Txn(TxnResponse { revision: 5, succeeded: false, results: vec![] }),
        ]);
        let bytes = crate::codec::encode(&answer);
        assert_eq!(crate::codec::decode::<ClientResponse>("answer", &bytes).ok(), Some(answer.clone()));

        let nested = request(0, Command::Batch(vec![batch.clone()]));
        let error =
            crate::codec::decode::<ClientRequest>("request", &crate::codec::encode(&nested)).expect_err("nested");
        assert!(error.to_string().starts_with("request: "), "{error}");
        let nested_answer = ClientResponse::Batch(vec![answer]);
        crate::codec::decode::<ClientResponse>("answer", &crate::codec::encode(&nested_answer)).expect_err("nested");

        // 100,000 levels: an empty client, request 0, time 0, Batch, one member; then a Txn.
        let mut deep = vec![crate::codec::FORMAT_V1];
        for _ in 0..100_000 {
            deep.extend_from_slice(&[0, 0, 0, 1, 1]);
        }
        deep.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        crate::codec::decode::<ClientRequest>("request", &deep).expect_err("deep");
        let mut deep_answer = vec![crate::codec::FORMAT_V1];
        for _ in 0..100_000 {
            deep_answer.extend_from_slice(&[4, 1]);
        }
        deep_answer.push(0);
        crate::codec::decode::<ClientResponse>("answer", &deep_answer).expect_err("deep");
    }

    /// postcard writes a byte string exactly as it wrote a sequence of bytes (a varint length,
    /// then the bytes), so stores and peers of earlier builds read and are read unchanged.
    #[test]
    fn bytes_are_encoded_as_before() {
        let value: Vec<u8> = (0..=255).cycle().take(300).collect();
        let kv = KeyValue {
            key: b"/runs/a".to_vec(),
            value: value.clone(),
            create_revision: 3,
            mod_revision: 9,
            version: 2,
        };
        let old = before::KeyValue {
            key: b"/runs/a".to_vec(),
            value: value.clone(),
            create_revision: 3,
            mod_revision: 9,
            version: 2,
        };
        assert_eq!(postcard::to_stdvec(&kv).ok(), postcard::to_stdvec(&old).ok());
        let ops = [
            (
                Op::PutPrev { key: b"k".to_vec(), value: value.clone() },
                before::Op::Put { key: b"k".to_vec(), value: value.clone() },
            ),
            (
                Op::Get { key: b"k".to_vec(), prefix: true, limit: 7 },
                before::Op::Get { key: b"k".to_vec(), prefix: true, limit: 7 },
            ),
            (Op::DeletePrev { key: vec![] }, before::Op::Delete { key: vec![] }),
            (Op::DeletePrefixPrev { prefix: b"/p/".to_vec() }, before::Op::DeletePrefix { prefix: b"/p/".to_vec() }),
        ];
        for (op, old) in ops {
            let bytes = postcard::to_stdvec(&op).expect("encode");
            assert_eq!(Some(&bytes), postcard::to_stdvec(&old).ok().as_ref(), "{op:?}");
            assert_eq!(postcard::from_bytes::<Op>(&bytes).ok(), Some(op));
        }
        let targets = [
            (CompareTarget::Version(4), before::CompareTarget::Version(4)),
            (CompareTarget::CreateRevision(5), before::CompareTarget::CreateRevision(5)),
            (CompareTarget::ModRevision(6), before::CompareTarget::ModRevision(6)),
            (CompareTarget::Value(value.clone()), before::CompareTarget::Value(value)),
        ];
        for (target, old) in targets {
            assert_eq!(postcard::to_stdvec(&target).ok(), postcard::to_stdvec(&old).ok(), "{target:?}");
        }
        let compare = Compare::value(b"k".to_vec(), b"v".to_vec());
        let bytes = postcard::to_stdvec(&compare).expect("encode");
        assert_eq!(postcard::from_bytes::<Compare>(&bytes).ok(), Some(compare));
    }

    /// The writes that do not answer with what they replaced came after the four variants
    /// earlier builds wrote, so those read back as the writes that do (as they always did).
    #[test]
    fn writes_without_their_previous_values_are_encoded_after_the_earlier_variants() {
        let ops = [
            (Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }, 4),
            (Op::Delete { key: b"k".to_vec() }, 5),
            (Op::DeletePrefix { prefix: b"p".to_vec() }, 6),
        ];
        for (op, index) in ops {
            let bytes = postcard::to_stdvec(&op).expect("encode");
            assert_eq!(bytes.first(), Some(&index), "{op:?}");
            assert_eq!(postcard::from_bytes::<Op>(&bytes).ok(), Some(op));
        }
        let removed = OpResult::Removed { count: 3 };
        let bytes = postcard::to_stdvec(&removed).expect("encode");
        assert_eq!(bytes, [3, 3], "after Put, Get and Delete");
        assert_eq!(postcard::from_bytes::<OpResult>(&bytes).ok(), Some(removed));
    }
}
