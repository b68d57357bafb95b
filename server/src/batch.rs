//! Many independent guarded writes proposed together (the scheduler's grants, revokes and
//! status updates): each write is its own compare-and-write, but up to a transaction's worth
//! of them share one Raft proposal, so a pass that places 10,000 pipelines makes tens of
//! proposals instead of 20,000 (PERF W7).
//!
//! A chunk is one transaction whose compares are every write's compares. When all hold, every
//! write of the chunk applied at the chunk's revision. When any fails (rare: the leader's
//! controllers are the only writers of these keys), the chunk changed nothing and each of its
//! writes is retried as a transaction of its own, so one stale write never holds back others.

use xene_raft_store::command::MAX_TXN_OPS;
use xene_raft_store::{Compare, Op, Txn};

use crate::error::Result;
use crate::node::ClusterNode;

/// Largest encoded size of one chunk's keys and values: a proposal stays small enough to
/// replicate within a heartbeat interval.
const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// One guarded write: `ops` apply only if every compare holds.
#[derive(Debug, Clone)]
pub struct GuardedWrite {
    pub compare: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl GuardedWrite {
    fn len(&self) -> usize {
        self.compare.len() + self.ops.len()
    }

    fn bytes(&self) -> usize {
        self.ops.iter().map(Op::payload_len).sum::<usize>()
            + self.compare.iter().map(Compare::payload_len).sum::<usize>()
    }
}

/// Applies `writes` through the leader only (as [`ClusterNode::leader_txn`]) and returns, for
/// each in order, the revision it applied at, or `None` when one of its compares failed.
pub async fn leader_writes(node: &ClusterNode, writes: Vec<GuardedWrite>) -> Result<Vec<Option<u64>>> {
    let mut outcome = Vec::with_capacity(writes.len());
    for chunk in chunks(writes) {
        if let [single] = chunk.as_slice() {
            outcome.push(write_one(node, single.clone()).await?);
            continue;
        }
        let txn = Txn {
            compare: chunk.iter().flat_map(|w| w.compare.iter().cloned()).collect(),
            success: chunk.iter().flat_map(|w| w.ops.iter().cloned()).collect(),
            failure: vec![],
        };
        let response = node.leader_txn(txn).await?;
        if response.succeeded {
            outcome.extend(std::iter::repeat_n(Some(response.revision), chunk.len()));
        } else {
            for write in chunk {
                outcome.push(write_one(node, write).await?);
            }
        }
    }
    Ok(outcome)
}

async fn write_one(node: &ClusterNode, write: GuardedWrite) -> Result<Option<u64>> {
    let response = node.leader_txn(Txn { compare: write.compare, success: write.ops, failure: vec![] }).await?;
    Ok(response.succeeded.then_some(response.revision))
}

/// Splits `writes`, in order, into chunks that fit one transaction.
fn chunks(writes: Vec<GuardedWrite>) -> Vec<Vec<GuardedWrite>> {
    let mut out: Vec<Vec<GuardedWrite>> = Vec::new();
    let (mut ops, mut bytes) = (0, 0);
    for write in writes {
        let fits = out.last().is_some_and(|last| {
            !last.is_empty() && ops + write.len() <= MAX_TXN_OPS && bytes + write.bytes() <= MAX_CHUNK_BYTES
        });
        if !fits {
            out.push(Vec::new());
            (ops, bytes) = (0, 0);
        }
        ops += write.len();
        bytes += write.bytes();
        out.last_mut().expect("invariant: a chunk was just pushed").push(write);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize) -> GuardedWrite {
        GuardedWrite {
            compare: vec![Compare::absent(key.as_bytes().to_vec())],
            ops: vec![Op::Put { key: key.as_bytes().to_vec(), value: vec![0; value_len] }],
        }
    }

    #[test]
    fn chunks_respect_the_transaction_limits_and_keep_order() {
        let writes: Vec<GuardedWrite> = (0..1500).map(|i| put(&format!("k{i:04}"), 10)).collect();
        let chunks = chunks(writes);
        // 2 entries (compare + put) per write: 512 writes fill a transaction of 1,024.
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![512, 512, 476]);
        let keys: Vec<Vec<u8>> = chunks.iter().flatten().map(|w| w.compare[0].key.clone()).collect();
        let expected: Vec<Vec<u8>> = (0..1500).map(|i| format!("k{i:04}").into_bytes()).collect();
        assert_eq!(keys, expected);

        let big: Vec<GuardedWrite> = (0..5).map(|i| put(&format!("b{i}"), 100 * 1024)).collect();
        assert_eq!(chunks_len(big), vec![2, 2, 1], "256 KiB per chunk");
        let huge = vec![put("h", 600 * 1024), put("i", 1)];
        assert_eq!(chunks_len(huge), vec![1, 1], "a write bigger than a chunk goes alone");
    }

    fn chunks_len(writes: Vec<GuardedWrite>) -> Vec<usize> {
        chunks(writes).iter().map(Vec::len).collect()
    }
}
