//! A leader replicates its entries while its own disk syncs them, counts them only once they
//! are synced, and after a crash leads only in a new term, never its old one again
//! (the patch in vendor/openraft/XENE.md), and a follower's leader lease is the shortest
//! election timeout and a heartbeat: three Raft nodes over this store in one process,
//! joined by an in-memory network, with a node's disk stalled ([`LogStore::stall_disk`]).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{Config, ServerState};
use tempfile::TempDir;
use xene_raft_store::{KvReader, LogStore, NodeId, NodeInfo, Raft, StateMachineStore, StoreConfig, TypeConfig};

/// Every node's Raft handle, for the network to deliver to, and the nodes cut off from it.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
    cut: Arc<Mutex<BTreeSet<NodeId>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Option<Raft> {
        if self.cut.lock().expect("router lock").contains(&id) {
            return None;
        }
        self.nodes.lock().expect("router lock").get(&id).cloned()
    }

    fn insert(&self, id: NodeId, raft: Raft) {
        self.nodes.lock().expect("router lock").insert(id, raft);
    }

    fn remove(&self, id: NodeId) {
        self.nodes.lock().expect("router lock").remove(&id);
    }

    /// Messages to `id` fail from now on, or again get through.
    fn cut(&self, id: NodeId, cut: bool) {
        let mut set = self.cut.lock().expect("router lock");
        if cut {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }
}

struct Link {
    target: NodeId,
    router: Router,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not reachable")]
struct Missing(NodeId);

impl Link {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        RPCError::Unreachable(Unreachable::new(&Missing(self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &NodeInfo) -> Link {
        Link { target, router: self.clone() }
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let raft = self.router.get(self.target).ok_or_else(|| self.unreachable())?;
        raft.append_entries(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        let raft = self.router.get(self.target).ok_or_else(|| self.unreachable())?;
        raft.install_snapshot(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let raft = self.router.get(self.target).ok_or_else(|| self.unreachable())?;
        raft.vote(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

struct Node {
    raft: Raft,
    log: LogStore,
    reader: KvReader,
}

impl Node {
    /// Starts node `id` over the store in `dir`, with a heartbeat interval of `heartbeat_ms`, and
    /// makes it reachable.
    async fn start(id: NodeId, dir: &Path, router: &Router, heartbeat_ms: u64) -> Node {
        let config = Arc::new(
            Config {
                heartbeat_interval: heartbeat_ms,
                election_timeout_min: heartbeat_ms * 6,
                election_timeout_max: heartbeat_ms * 12,
                ..Config::default()
            }
            .validate()
            .expect("raft config"),
        );
        let (log, sm) = open_when_free(dir).await;
        let reader = sm.reader();
        let raft = Raft::new(id, config, router.clone(), log.clone(), sm).await.expect("raft");
        router.insert(id, raft.clone());
        Node { raft, log, reader }
    }

    fn applied(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
    }

    async fn wait(&self, what: &str, until: impl Fn(&openraft::RaftMetrics<NodeId, NodeInfo>) -> bool + Send) {
        self.raft.wait(Some(Duration::from_secs(10))).metrics(until, what).await.expect(what);
    }

    /// The value of `key` in this node's state machine.
    async fn value(&self, key: &str) -> Option<String> {
        let result = self.reader.range(key.into(), false, 0).await.expect("range");
        result.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    /// Writes `key` through this node, which must lead, in a task of its own.
    fn write(
        &self,
        key: &str,
        value: &str,
    ) -> tokio::task::JoinHandle<Result<openraft::raft::ClientWriteResponse<TypeConfig>, impl std::fmt::Debug>> {
        let raft = self.raft.clone();
        let request = common::request(common::txn(vec![common::put(key, value)]));
        tokio::spawn(async move { raft.client_write(request).await })
    }
}

/// Opens the store in `dir`; a node stopped a moment ago may still be closing it.
async fn open_when_free(dir: &Path) -> (LogStore, StateMachineStore) {
    for _ in 0..100 {
        match xene_raft_store::open(dir, &StoreConfig::default()) {
            Ok(opened) => return opened,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    xene_raft_store::open(dir, &StoreConfig::default()).expect("the store is free 10 s after its node stopped")
}

/// Three nodes led by node 1, each having applied one write; nodes 2 and 3 never campaign, so
/// node 1 stays the only one that leads.
async fn cluster(heartbeat_ms: u64) -> (Router, Vec<TempDir>, BTreeMap<NodeId, Node>, u64) {
    let router = Router::default();
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, Node::start(id, dirs[id as usize - 1].path(), &router, heartbeat_ms).await);
    }
    let members: BTreeMap<NodeId, NodeInfo> = (1..=3).map(|id| (id, NodeInfo::default())).collect();
    nodes[&1].raft.initialize(members).await.expect("initialize");
    nodes[&1].wait("node 1 leads", |m| m.state == ServerState::Leader).await;
    for id in [2, 3] {
        nodes[&id].raft.runtime_config().elect(false);
    }
    let first = nodes[&1].write("before", "v").await.expect("join").expect("a write on a healthy cluster");
    let last = first.log_id.index;
    for node in nodes.values() {
        node.wait("every node applies the first write", |m| m.last_applied.is_some_and(|a| a.index == last)).await;
    }
    (router, dirs, nodes, last)
}

/// Waits until the leader has heard that `follower` stored entry `index`.
async fn acknowledged(leader: &Node, follower: NodeId, index: u64) {
    leader
        .wait("the follower's acknowledgement reaches the leader", |m| {
            m.replication.as_ref().and_then(|r| r.get(&follower).cloned().flatten()).is_some_and(|id| id.index >= index)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_replicates_while_it_syncs_and_commits_only_what_it_has_synced() {
    let (_router, _dirs, nodes, last) = cluster(50).await;
    let (leader, index) = (&nodes[&1], last + 1);
    // Entry `index` can be committed only once two of the three nodes have synced it. With
    // node 2's disk stalled as well, that takes the leader's own sync.
    let leader_stall = leader.log.stall_disk();
    let follower_stall = nodes[&2].log.stall_disk();
    let held = leader.write("held", "v");
    nodes[&3]
        .wait("node 3 receives the entry while the leader's disk stalls", |m| m.last_log_index >= Some(index))
        .await;
    acknowledged(leader, 3, index).await;
    // Several heartbeats, which would carry a committed index to the followers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if held.is_finished() {
        panic!("the write finished before the leader synced it: {:?}", held.await);
    }
    for (id, node) in &nodes {
        assert!(node.applied() < index, "node {id} applied entry {index} before the leader synced it");
    }
    assert_eq!(leader.raft.metrics().borrow().state, ServerState::Leader, "node 1 still leads while its disk stalls");

    // The leader's sync and node 3's make two of three.
    drop(leader_stall);
    let answer = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the write is acknowledged once the leader's disk goes on")
        .expect("join")
        .expect("the write succeeds");
    assert_eq!(answer.log_id.index, index);
    drop(follower_stall);
    for node in nodes.values() {
        node.wait("every node applies the entry", |m| m.last_applied.is_some_and(|a| a.index >= index)).await;
    }
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}

/// Stock openraft 0.9 resumes a restarted leader's term. Having replicated entries it then lost
/// in a crash, it would give its next entries the same log ids, and a follower holding the lost
/// ones would take them for the same entries and keep its own. Here it starts as a follower and
/// leads only after winning a new term (nodes 2 and 3 never campaign in this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_entries_in_a_crash_leads_only_in_a_new_term() {
    let (router, dirs, mut nodes, last) = cluster(50).await;
    let index = last + 1;
    let term = nodes[&1].raft.metrics().borrow().current_term;
    // Node 2 alone receives and syncs the entry; node 3 is cut off and the leader's disk
    // stalls, so nothing commits it.
    router.cut(3, true);
    let stall = nodes[&1].log.stall_disk();
    let lost = nodes[&1].write("lost", "v");
    nodes[&2].wait("node 2 receives the entry", |m| m.last_log_index >= Some(index)).await;
    acknowledged(&nodes[&1], 2, index).await;
    assert!(!lost.is_finished(), "a write on one of three disks was acknowledged");

    // The leader crashes: its store closes while the disk stalls, so the entry never reaches it.
    let crashed = nodes.remove(&1).expect("node 1");
    router.remove(1);
    crashed.raft.shutdown().await.expect("shutdown");
    drop(crashed);
    let _ = lost.await;
    // The disk stalls until the store has closed, which drops what was queued.
    let (mut log, _) = open_when_free(dirs[0].path()).await;
    drop(stall);
    let stored = log.get_log_state().await.expect("log state").last_log_id.map(|id| id.index);
    assert_eq!(stored, Some(last), "the crash was to take the entry node 1 had not written");
    drop(log);
    router.cut(3, false);

    let restarted = Node::start(1, dirs[0].path(), &router, 50).await;
    restarted.wait("node 1 leads again", |m| m.state == ServerState::Leader).await;
    let now = restarted.raft.metrics().borrow().current_term;
    assert!(now > term, "node 1 leads term {now} again after a crash; it led term {term} before");
    let after = restarted.write("after", "w").await.expect("join").expect("a write after the restart");
    nodes.insert(1, restarted);
    for node in nodes.values() {
        node.wait("every node applies the write after the restart", |m| {
            m.last_applied.is_some_and(|a| a.index >= after.log_id.index)
        })
        .await;
    }
    for (id, node) in &nodes {
        assert_eq!(node.value("after").await.as_deref(), Some("w"), "node {id} lacks the write after the restart");
        assert_eq!(node.value("lost").await, None, "node {id} applied an entry no quorum stored");
    }
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}

/// A committed index waits a moment for entries to carry it, but no longer (the second part of
/// the patch): with a heartbeat interval of 2 s (openraft sends one every 3 s), the followers
/// apply a lone write long before the next heartbeat would tell them it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_of_a_commit_without_waiting_for_a_heartbeat() {
    let (_router, _dirs, nodes, last) = cluster(2_000).await;
    // The first write's commit went out already; this one is alone.
    let answer = nodes[&1].write("alone", "v").await.expect("join").expect("a write");
    let index = answer.log_id.index;
    assert!(index > last);
    for id in [2, 3] {
        nodes[&id]
            .raft
            .wait(Some(Duration::from_millis(1_000)))
            .metrics(|m| m.last_applied.is_some_and(|a| a.index >= index), "the follower applies the write")
            .await
            .unwrap_or_else(|e| {
                panic!("node {id} did not learn of the commit within a second (heartbeats every 3 s): {e}")
            });
    }
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}

/// A follower that heard from its leader refuses votes for the leader lease, which is the
/// shortest election timeout and a heartbeat (the third part of the patch), not stock
/// 0.9.25's longest election timeout. Here heartbeats are 150 ms apart (openraft sends one
/// every 225 ms) and election timeouts 900 to 1,800 ms: a lease of 1,050 ms, against 1,800 ms
/// unpatched. With the leader's heartbeats stopped, a vote asked for 300 ms later is refused
/// and one asked for 1,300 ms later is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_votes_again_once_the_shortest_election_timeout_and_a_heartbeat_have_passed() {
    let (_router, _dirs, nodes, _last) = cluster(150).await;
    let term = nodes[&2].raft.metrics().borrow().current_term;
    nodes[&1].raft.runtime_config().heartbeat(false);
    let stopped = tokio::time::Instant::now();
    let mut log = nodes[&2].log.clone();
    let last_log_id = log.get_log_state().await.expect("log state").last_log_id;
    let ask = || nodes[&2].raft.vote(VoteRequest::new(openraft::Vote::new(term + 1, 3), last_log_id));

    tokio::time::sleep_until(stopped + Duration::from_millis(300)).await;
    let early = ask().await.expect("vote");
    assert!(!early.vote_granted, "node 2 voted 300 ms after its leader's last heartbeat, inside its lease: {early:?}");

    tokio::time::sleep_until(stopped + Duration::from_millis(1_300)).await;
    let late = ask().await.expect("vote");
    assert!(
        late.vote_granted,
        "node 2 refused a vote 1,300 ms after its leader's last heartbeat, past a lease of 1,050 ms: {late:?}"
    );
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}
