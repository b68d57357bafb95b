//! Bad bytes never panic the command decoder (DESIGN §14): a seeded mutation run over the
//! encodings of what peers send each other and what the log holds (proposals and their
//! answers, log entries, AppendEntries and vote requests). Every mutated input must decode
//! or be refused with an error; a panic or an abort fails the run. The seed is printed; set
//! `XENE_FUZZ_SEED` to replay a run and `XENE_FUZZ_CASES` to run longer. A few random edits
//! never nest batches deeply: `command.rs`' own test feeds the decoder 100,000 levels.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use xene_raft_store::codec::{self, DecodeError};
use xene_raft_store::types::{Entry, LogId, Vote};
use xene_raft_store::{
    ClientRequest, ClientResponse, Command, Compare, DuplicateResponse, KeyValue, NodeInfo, Op, OpResult, Rejection,
    TxnResponse,
};

/// The run's random choices, all from one seed, so a failure can be replayed.
struct Rng(rand::rngs::StdRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        rand::Rng::random(&mut self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        rand::Rng::random_range(&mut self.0, 0..n.max(1))
    }
}

fn request(id: u64, command: Command) -> ClientRequest {
    ClientRequest { client_id: format!("client-{id}"), request_id: id, timestamp_ms: 1_764_000_000_000, command }
}

fn txn(key: &str) -> Command {
    Command::Txn(xene_raft_store::Txn {
        compare: vec![Compare::absent(key.as_bytes().to_vec()), Compare::mod_revision(key.as_bytes().to_vec(), 7)],
        success: vec![
            Op::Put { key: key.as_bytes().to_vec(), value: vec![0xAB; 40] },
            Op::Get { key: b"/runs/".to_vec(), prefix: true, limit: 10 },
        ],
        failure: vec![Op::Delete { key: key.as_bytes().to_vec() }, Op::DeletePrefix { prefix: b"/tmp/".to_vec() }],
    })
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn entries() -> Vec<Entry> {
    let nodes: BTreeMap<u64, NodeInfo> = (1..=3)
        .map(|id| (id, NodeInfo { grpc_addr: format!("127.0.0.1:740{id}"), http_addr: format!("127.0.0.1:750{id}") }))
        .collect();
    let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    vec![
        Entry { log_id: log_id(1), payload: EntryPayload::Blank },
        Entry { log_id: log_id(2), payload: EntryPayload::Membership(membership) },
        Entry { log_id: log_id(3), payload: EntryPayload::Normal(request(1, txn("/a"))) },
        Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(request(
                0,
                Command::Batch(vec![request(2, txn("/b")), request(3, txn("/c"))]),
            )),
        },
    ]
}

/// What is decoded from one encoding, as the name of its type.
type Decoder = fn(&[u8]) -> Result<(), DecodeError>;

fn samples() -> Vec<(&'static str, Vec<u8>, Decoder)> {
    let answer = ClientResponse::Batch(vec![
        ClientResponse::Txn(TxnResponse {
            revision: 9,
            succeeded: true,
            results: vec![
                OpResult::Put {
                    prev: Some(KeyValue {
                        key: b"/a".to_vec(),
                        value: b"old".to_vec(),
                        create_revision: 2,
                        mod_revision: 5,
                        version: 3,
                    }),
                },
                OpResult::Get { kvs: vec![], more: true },
                OpResult::Delete { deleted: vec![] },
            ],
        }),
        ClientResponse::Rejected(Rejection::RequestTooOld { client_id: "c".into(), request_id: 4 }),
        ClientResponse::Duplicate(DuplicateResponse { revision: 3, succeeded: false }),
        ClientResponse::Empty,
    ]);
    let append = AppendEntriesRequest::<xene_raft_store::TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(0)),
        entries: entries(),
        leader_commit: Some(log_id(2)),
    };
    let vote = VoteRequest::<u64> { vote: Vote::new(4, 2), last_log_id: Some(log_id(4)) };
    vec![
        ("a proposal", codec::encode(&request(5, txn("/workflows/w"))), |b| {
            codec::decode::<ClientRequest>("proposal", b).map(drop)
        }),
        (
            "a batch",
            codec::encode(&request(0, Command::Batch(vec![request(6, txn("/x")), request(7, txn("/y"))]))),
            |b| codec::decode::<ClientRequest>("batch", b).map(drop),
        ),
        ("an answer", codec::encode(&answer), |b| codec::decode::<ClientResponse>("answer", b).map(drop)),
        ("a log entry", codec::encode(&entries()[3]), |b| codec::decode::<Entry>("entry", b).map(drop)),
        ("a membership entry", codec::encode(&entries()[1]), |b| codec::decode::<Entry>("entry", b).map(drop)),
        ("an AppendEntries request", codec::encode(&append), |b| {
            codec::decode::<AppendEntriesRequest<xene_raft_store::TypeConfig>>("append", b).map(drop)
        }),
        ("a vote request", codec::encode(&vote), |b| codec::decode::<VoteRequest<u64>>("vote", b).map(drop)),
    ]
}

#[test]
fn mutated_encodings_never_panic_the_decoder() {
    let seed = std::env::var("XENE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xDEC0DE_u64);
    let cases: usize = std::env::var("XENE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let samples = samples();
    // Unchanged, every sample reads back.
    for (what, bytes, decode) in &samples {
        assert!(decode(bytes).is_ok(), "{what} does not read back: {:?}", decode(bytes).err());
    }
    let mut rng = Rng::new(seed);
    let (mut refused, mut read) = (0usize, 0usize);
    for case in 0..cases {
        let (what, original, decode) = &samples[rng.below(samples.len())];
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(5) {
                0 => {
                    let end = (at + 1 + rng.below(16)).min(bytes.len());
                    bytes.drain(at..end);
                }
                1 => bytes.truncate(at),
                2 => {
                    let noise: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                    bytes.splice(at..at, noise);
                }
                3 => {
                    // Lengths and enum tags are varints: the values that mean most.
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte = [0x00, 0x01, 0x02, 0x05, 0x7F, 0x80, 0xFF][rng.below(7)];
                    }
                }
                _ => {
                    let end = (at + 1 + rng.below(32)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    let to = rng.below(bytes.len() + 1);
                    bytes.splice(to..to, copy);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        let outcome = std::panic::catch_unwind(|| decode(&bytes));
        match outcome {
            Ok(Ok(())) => read += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("case {case} of seed {seed}: decoding mutated {what} panicked on {bytes:02x?}"),
        }
    }
    println!("seed {seed}: {cases} mutated encodings, {refused} refused, {read} read as something else");
    assert!(refused > cases / 2, "most mutations break an encoding: {refused} of {cases} refused");
}
