//! The nemesis: injects faults into a running cluster from one seeded random stream
//! (DESIGN §14), on leaders and followers alike, and counts them by kind for the report.
//!
//! At most one process fault (SIGKILL then restart with the same data directory, or
//! SIGSTOP then SIGCONT) and one network fault (partition, one-way cut, delay, dropped
//! connections, a cut client link) are active at a time; each is healed after a random hold.
//! [`Nemesis::heal_all`] ends every fault, as the heal phase of a scenario needs.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use xene_proto as pb;

use crate::harness::TestCluster;
use crate::network::{Cut, Network};

/// The kinds of fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL, stay down a while, restart with the same data directory.
    Kill,
    /// SIGSTOP, stay stopped a while, SIGCONT.
    Pause,
    /// A minority of the servers (one of three) cut from the majority, both ways; clients
    /// still reach every server.
    Partition,
    /// Two servers cut from each other only; each still reaches the others.
    CutPair,
    /// One server cannot reach another, which still reaches it.
    OneWay,
    /// Nobody reaches a server, which still reaches everyone.
    CutInbound,
    /// A server's requests to its peers arrive, but the answers are held.
    AnswersBlocked,
    /// Latency on every link of one server.
    Delay,
    /// Every connection of one server's links closed, and new ones refused, for a moment.
    DropConnections,
    /// The clients' link to a server cut.
    ClientCut,
}

impl FaultKind {
    fn is_process(self) -> bool {
        matches!(self, FaultKind::Kill | FaultKind::Pause)
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::CutPair => "cut-pair",
            FaultKind::OneWay => "one-way",
            FaultKind::CutInbound => "cut-inbound",
            FaultKind::AnswersBlocked => "answers-blocked",
            FaultKind::Delay => "delay",
            FaultKind::DropConnections => "drop-connections",
            FaultKind::ClientCut => "client-cut",
        }
    }
}

/// Which faults, how often, and for how long.
#[derive(Clone, Debug)]
pub struct NemesisProfile {
    /// Relative weights; a kind with weight 0 (or absent) never happens.
    pub weights: Vec<(FaultKind, u32)>,
    /// The probability that a fault aimed at one server aims at the leader.
    pub leader_bias: f64,
    /// How long a fault lasts.
    pub hold: Range<Duration>,
    /// The pause between two faults.
    pub quiet: Range<Duration>,
    /// The most faults active at once (one process fault and one network fault at most).
    pub max_active: usize,
}

impl NemesisProfile {
    /// Every kind of fault, leaders and followers alike.
    pub fn everything() -> NemesisProfile {
        NemesisProfile {
            weights: vec![
                (FaultKind::Kill, 4),
                (FaultKind::Pause, 3),
                (FaultKind::Partition, 4),
                (FaultKind::CutPair, 2),
                (FaultKind::OneWay, 2),
                (FaultKind::CutInbound, 2),
                (FaultKind::AnswersBlocked, 2),
                (FaultKind::Delay, 2),
                (FaultKind::DropConnections, 2),
                (FaultKind::ClientCut, 1),
            ],
            leader_bias: 0.5,
            hold: Duration::from_millis(300)..Duration::from_millis(3000),
            quiet: Duration::from_millis(100)..Duration::from_millis(1200),
            max_active: 2,
        }
    }
}

/// One fault in force.
#[derive(Clone, Debug)]
struct Active {
    kind: FaultKind,
    /// The servers it aims at (by index), for the log line and for healing.
    targets: Vec<usize>,
    cut: Cut,
    delay: Duration,
    until: Instant,
}

impl fmt::Display for Active {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind.name(), self.targets)?;
        match self.kind {
            FaultKind::Delay => write!(f, " {} ms", self.delay.as_millis()),
            FaultKind::Kill | FaultKind::Pause | FaultKind::DropConnections => Ok(()),
            _ => write!(f, " {:?}", self.cut),
        }
    }
}

/// The fault injector. Owns its random stream; borrows the cluster and network per call.
pub struct Nemesis {
    rng: StdRng,
    profile: NemesisProfile,
    active: Vec<Active>,
    counts: BTreeMap<String, u64>,
    restarts: Vec<u64>,
    started: Instant,
}

impl Nemesis {
    pub fn new(rng: StdRng, profile: NemesisProfile, servers: usize) -> Nemesis {
        Nemesis {
            rng,
            profile,
            active: Vec::new(),
            counts: BTreeMap::new(),
            restarts: vec![0; servers],
            started: Instant::now(),
        }
    }

    /// Faults injected so far, by `kind/role`.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// How many times server `index` was restarted by the nemesis.
    pub fn restarts(&self, index: usize) -> u64 {
        self.restarts[index]
    }

    /// Injects and heals faults until `duration` has passed, then heals everything.
    pub async fn run(&mut self, cluster: &mut TestCluster, network: &Network, duration: Duration) {
        let end = Instant::now() + duration;
        let mut next_fault = Instant::now() + self.quiet();
        while Instant::now() < end {
            let now = Instant::now();
            let expired: Vec<usize> = (0..self.active.len()).filter(|i| self.active[*i].until <= now).collect();
            for index in expired.into_iter().rev() {
                let fault = self.active.remove(index);
                self.heal(cluster, network, &fault);
            }
            if now >= next_fault && self.active.len() < self.profile.max_active {
                self.inject(cluster, network, end).await;
                next_fault = Instant::now() + self.quiet();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.heal_all(cluster, network);
    }

    /// Ends every fault: links healed, stopped servers continued, killed servers restarted.
    pub fn heal_all(&mut self, cluster: &mut TestCluster, network: &Network) {
        for fault in std::mem::take(&mut self.active) {
            self.heal(cluster, network, &fault);
        }
        network.heal();
        for server in &cluster.servers {
            server.resume();
        }
        for (index, server) in cluster.servers.iter_mut().enumerate() {
            if !server.is_running() {
                server.restart();
                self.restarts[index] += 1;
            }
        }
    }

    fn quiet(&mut self) -> Duration {
        self.rng.random_range(self.profile.quiet.clone())
    }

    fn log(&self, what: &str) {
        println!("nemesis t={:.1}s {what}", self.started.elapsed().as_secs_f64());
    }

    /// Picks a kind that does not clash with the active faults, a target, and applies it.
    async fn inject(&mut self, cluster: &mut TestCluster, network: &Network, end: Instant) {
        // Draw from every kind, so the mix follows the weights; a kind whose slot (process or
        // network) is taken waits for the next turn.
        let Ok(&(kind, _)) = self.profile.weights.choose_weighted(&mut self.rng, |(_, weight)| *weight) else { return };
        if self.active.iter().any(|a| a.kind.is_process() == kind.is_process()) {
            return;
        }
        let servers = cluster.servers.len();
        // Servers that are down do not answer; ask only the others who leads.
        let down: Vec<usize> =
            self.active.iter().filter(|a| a.kind.is_process()).flat_map(|a| a.targets.clone()).collect();
        let leader = find_leader(cluster, &down).await;
        let aim_at_leader = self.rng.random_bool(self.profile.leader_bias);
        let up: Vec<usize> = (0..servers).filter(|i| !down.contains(i)).collect();
        let target = match leader {
            Some(leader) if aim_at_leader => leader,
            _ => {
                let followers: Vec<usize> = up.iter().copied().filter(|i| Some(*i) != leader).collect();
                match followers.choose(&mut self.rng) {
                    Some(follower) => *follower,
                    None => return,
                }
            }
        };
        let role = if Some(target) == leader { "leader" } else { "follower" };
        let other = {
            let others: Vec<usize> = (0..servers).filter(|i| *i != target).collect();
            *others.choose(&mut self.rng).expect("invariant: a cluster has more than one server")
        };
        let cut = *[Cut::Blackhole, Cut::Drop].choose(&mut self.rng).expect("invariant: not empty");
        let hold = self.rng.random_range(self.profile.hold.clone());
        let until = (Instant::now() + hold).min(end);
        let mut fault = Active { kind, targets: vec![target], cut, delay: Duration::ZERO, until };
        match kind {
            FaultKind::Kill => cluster.servers[target].kill(),
            FaultKind::Pause => cluster.servers[target].pause(),
            FaultKind::Partition => {
                // A random minority that holds the target: with three servers, the target alone.
                let minority = self.rng.random_range(1..=(servers - 1) / 2);
                let mut rest: Vec<usize> = (0..servers).filter(|i| *i != target).collect();
                while fault.targets.len() < minority {
                    let pick = self.rng.random_range(0..rest.len());
                    fault.targets.push(rest.remove(pick));
                }
            }
            FaultKind::CutPair | FaultKind::OneWay => fault.targets.push(other),
            FaultKind::AnswersBlocked => fault.cut = Cut::AnswersBlocked,
            FaultKind::Delay => fault.delay = Duration::from_millis(self.rng.random_range(20..=300)),
            FaultKind::DropConnections => {
                fault.cut = Cut::Drop;
                fault.until = (Instant::now() + hold / 4).min(end);
            }
            FaultKind::CutInbound | FaultKind::ClientCut => {}
        }
        self.log(&format!("{fault} ({role})"));
        *self.counts.entry(format!("{}/{role}", kind.name())).or_default() += 1;
        self.active.push(fault);
        self.apply_network(network);
    }

    /// Sets every link as the active network faults say (healthy otherwise).
    fn apply_network(&self, network: &Network) {
        network.heal();
        for fault in self.active.iter().filter(|a| !a.kind.is_process()) {
            let target = fault.targets[0];
            match fault.kind {
                FaultKind::Partition => network.partition(&fault.targets, fault.cut),
                FaultKind::CutPair => network.cut_both_ways(target, fault.targets[1], fault.cut),
                FaultKind::OneWay => network.cut_one_way(target, fault.targets[1], fault.cut),
                FaultKind::CutInbound => network.cut_inbound(target, fault.cut),
                FaultKind::AnswersBlocked => {
                    for other in (0..network.servers()).filter(|o| *o != target) {
                        network.cut_one_way(target, other, Cut::AnswersBlocked);
                    }
                }
                FaultKind::Delay => network.delay_node(target, fault.delay),
                FaultKind::DropConnections => network.isolate(target, Cut::Drop),
                FaultKind::ClientCut => network.cut_clients(target, fault.cut),
                FaultKind::Kill | FaultKind::Pause => {}
            }
        }
    }

    fn heal(&mut self, cluster: &mut TestCluster, network: &Network, fault: &Active) {
        self.log(&format!("heal {fault}"));
        let target = fault.targets[0];
        match fault.kind {
            FaultKind::Kill => {
                cluster.servers[target].restart();
                self.restarts[target] += 1;
            }
            FaultKind::Pause => cluster.servers[target].resume(),
            _ => self.apply_network(network),
        }
    }
}

/// The leader as the servers that are up report it: the one claiming leadership with the
/// highest term (an isolated old leader may still claim it), asked directly, not through
/// the proxies, with a short deadline each.
pub async fn find_leader(cluster: &TestCluster, down: &[usize]) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for (index, server) in cluster.servers.iter().enumerate() {
        if down.contains(&index) || !server.is_running() {
            continue;
        }
        let mut request = cluster.request(pb::StatusRequest {});
        request.set_timeout(Duration::from_millis(300));
        let mut client = cluster.cluster_client(index);
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(400), client.status(request)).await {
            let status = status.into_inner();
            if status.state == "leader" && best.is_none_or(|(term, _)| status.term > term) {
                best = Some((status.term, index));
            }
        }
    }
    best.map(|(_, index)| index)
}
