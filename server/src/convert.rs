//! Conversions between the wire types of `xene-proto` and the store's command types, in one
//! place per type (STYLE 4).

use xene_proto as pb;
use xene_raft_store::{Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Op, OpResult, Txn};

use crate::error::{Result, ServerError};
use crate::keys;

/// Whether `key` holds a secret's values, which no read returns (DESIGN §6.3).
fn is_secret(key: &[u8]) -> bool {
    key.starts_with(keys::SECRETS.as_bytes())
}

/// A key-value pair as the raw store's API answers it: a secret's values read as empty, so
/// that an admin token's `kv get /xene/secrets/ --prefix` (or a watch, or a write's previous
/// value) shows which secrets exist and when they changed, never what they hold.
pub fn kv_to_pb(kv: KeyValue) -> pb::KeyValue {
    let value = if is_secret(&kv.key) { Vec::new() } else { kv.value };
    pb::KeyValue {
        key: kv.key,
        value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

pub fn event_to_pb(event: Event) -> pb::Event {
    let kind = match event.kind {
        EventKind::Put => pb::event::EventType::Put,
        EventKind::Delete => pb::event::EventType::Delete,
    };
    pb::Event { r#type: kind as i32, kv: Some(kv_to_pb(event.kv)) }
}

pub fn compare_from_pb(compare: pb::Compare, path: &str) -> Result<Compare> {
    let op = match pb::compare::Result::try_from(compare.result) {
        Ok(pb::compare::Result::Equal) => CompareOp::Equal,
        Ok(pb::compare::Result::NotEqual) => CompareOp::NotEqual,
        Ok(pb::compare::Result::Less) => CompareOp::Less,
        Ok(pb::compare::Result::Greater) => CompareOp::Greater,
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "{path}.result: unknown comparison {}; use EQUAL, NOT_EQUAL, LESS or GREATER",
                compare.result
            )))
        }
    };
    let target = match compare.target {
        Some(pb::compare::Target::Version(v)) => CompareTarget::Version(v),
        Some(pb::compare::Target::CreateRevision(r)) => CompareTarget::CreateRevision(r),
        Some(pb::compare::Target::ModRevision(r)) => CompareTarget::ModRevision(r),
        // Comparing a secret's value with guesses would read it, a bit at a time.
        Some(pb::compare::Target::Value(_)) if is_secret(&compare.key) => {
            return Err(ServerError::InvalidArgument(format!(
                "{path}: the value of {:?} cannot be compared: secret values are never read back; compare its mod_revision or version instead",
                String::from_utf8_lossy(&compare.key)
            )))
        }
        Some(pb::compare::Target::Value(v)) => CompareTarget::Value(v),
        None => {
            return Err(ServerError::InvalidArgument(format!(
                "{path}: no target; set one of version, create_revision, mod_revision or value"
            )))
        }
    };
    Ok(Compare { key: compare.key, op, target })
}

pub fn op_from_pb(op: pb::RequestOp, path: &str) -> Result<Op> {
    match op.request {
        Some(pb::request_op::Request::Put(put)) => Ok(put_from_pb(put)),
        Some(pb::request_op::Request::Range(range)) => {
            Ok(Op::Get { key: range.key, prefix: range.prefix, limit: range.limit })
        }
        Some(pb::request_op::Request::Delete(delete)) => Ok(delete_from_pb(delete)),
        None => Err(ServerError::InvalidArgument(format!("{path}: empty operation; set put, range or delete"))),
    }
}

/// A put that answers with the key's previous version only when the request asks.
pub fn put_from_pb(put: pb::PutRequest) -> Op {
    match put.prev_kv {
        true => Op::PutPrev { key: put.key, value: put.value },
        false => Op::Put { key: put.key, value: put.value },
    }
}

/// A delete (of one key or a prefix) that answers with the keys as they were only when the
/// request asks.
pub fn delete_from_pb(delete: pb::DeleteRequest) -> Op {
    match (delete.prefix, delete.prev_kv) {
        (true, true) => Op::DeletePrefixPrev { prefix: delete.key },
        (true, false) => Op::DeletePrefix { prefix: delete.key },
        (false, true) => Op::DeletePrev { key: delete.key },
        (false, false) => Op::Delete { key: delete.key },
    }
}

pub fn txn_from_pb(request: pb::TxnRequest) -> Result<Txn> {
    let compare = request
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| compare_from_pb(c, &format!("compare[{i}]")))
        .collect::<Result<_>>()?;
    let success = request
        .success
        .into_iter()
        .enumerate()
        .map(|(i, op)| op_from_pb(op, &format!("success[{i}]")))
        .collect::<Result<_>>()?;
    let failure = request
        .failure
        .into_iter()
        .enumerate()
        .map(|(i, op)| op_from_pb(op, &format!("failure[{i}]")))
        .collect::<Result<_>>()?;
    Ok(Txn { compare, success, failure })
}

pub fn result_to_pb(result: OpResult, header: &pb::ResponseHeader) -> pb::ResponseOp {
    let response = match result {
        OpResult::Put { prev } => pb::response_op::Response::Put(pb::PutResponse {
            header: Some(*header),
            prev_kv: prev.map(kv_to_pb),
            replayed: false,
        }),
        OpResult::Get { kvs, more } => pb::response_op::Response::Range(pb::RangeResponse {
            header: Some(*header),
            kvs: kvs.into_iter().map(kv_to_pb).collect(),
            more,
        }),
        OpResult::Delete { deleted } => pb::response_op::Response::Delete(pb::DeleteResponse {
            header: Some(*header),
            deleted: deleted.len() as u64,
            prev_kvs: deleted.into_iter().map(kv_to_pb).collect(),
            replayed: false,
        }),
        OpResult::Removed { count } => pb::response_op::Response::Delete(pb::DeleteResponse {
            header: Some(*header),
            deleted: count,
            prev_kvs: vec![],
            replayed: false,
        }),
    };
    pb::ResponseOp { response: Some(response) }
}
