//! Agents as the leader sees them (DESIGN §7): the stored records, and the live sessions with
//! their heartbeats, which are kept in the leader's memory only (§7.6): only changes (an agent
//! up or down, a lease granted or revoked) go through Raft.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tonic::Status;
use xene_proto::ServerMessage;

/// An agent as stored at `/xene/agents/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// How many pipelines it takes at most.
    pub capacity: u32,
    /// `Up` or `Down`.
    pub state: AgentState,
    pub joined_ms: u64,
    /// The ID of its session credential.
    pub credential: String,
    /// The ID of the join token it joined with: the same token may repeat the join for a
    /// while (a join whose answer was lost), see `services::agent::REJOIN_WITHIN`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub joined_with: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Up,
    Down,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Up => "Up",
            AgentState::Down => "Down",
        }
    }
}

/// A pipeline lease as stored at `/xene/leases/<workflow>/<pipeline>`; its epoch is the key's
/// mod revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub workflow: String,
    pub pipeline: String,
    pub agent: String,
    pub ttl_ms: u64,
}

/// The channel to one connected agent.
pub type SessionSender = mpsc::Sender<Result<ServerMessage, Status>>;

struct Session {
    serial: u64,
    tx: SessionSender,
    labels: BTreeMap<String, String>,
    capacity: u32,
    last_heartbeat: Instant,
    last_heartbeat_ms: u64,
    /// Leases this session was told about, by pipeline.
    told: BTreeMap<String, Told>,
    /// Runs this session was told to start, with the lease epoch they were started under (a
    /// run started again after its agent was lost is told again under the new epoch), and
    /// runs it was told to cancel.
    runs_told: std::collections::BTreeSet<(String, u64)>,
    cancels_told: std::collections::BTreeSet<String>,
    /// Ends the session's tasks, and so its stream: on a newer session of the same agent, and
    /// when this server stops leading (the agent must then find the new leader).
    stop: tokio_util::sync::CancellationToken,
    /// Whether its stream is open (a closed one is kept until the agent's TTL runs out).
    open: bool,
}

/// A copy of one session's state for the scheduler.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub name: String,
    /// Heard from within the TTL.
    pub alive: bool,
    /// Its stream is open.
    pub connected: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub last_heartbeat_ms: u64,
    pub told: BTreeMap<String, Told>,
}

/// What a session was told it holds on one pipeline: a grant is sent again when either moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// The lease's epoch.
    pub epoch: u64,
    /// The revision the pipeline's workflow was applied at.
    pub workflow: u64,
}

/// The leader's live sessions.
pub struct AgentHub {
    sessions: Mutex<HashMap<String, Session>>,
    next_serial: Mutex<u64>,
    /// Wakes the scheduler when something changed.
    pub changed: Notify,
    pub ttl: Duration,
}

impl AgentHub {
    pub fn new(ttl: Duration) -> Self {
        AgentHub { sessions: Mutex::default(), next_serial: Mutex::new(1), changed: Notify::new(), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new session for `name`, replacing (and so closing) any older one.
    pub fn register(
        &self,
        name: &str,
        tx: SessionSender,
        labels: BTreeMap<String, String>,
        capacity: u32,
        now_ms: u64,
    ) -> (u64, tokio_util::sync::CancellationToken) {
        let serial = {
            let mut next = self.next_serial.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let session = Session {
            serial,
            tx,
            labels,
            capacity,
            last_heartbeat: Instant::now(),
            last_heartbeat_ms: now_ms,
            told: BTreeMap::new(),
            runs_told: Default::default(),
            cancels_told: Default::default(),
            stop: tokio_util::sync::CancellationToken::new(),
            open: true,
        };
        let stop = session.stop.clone();
        if let Some(older) = self.lock().insert(name.to_string(), session) {
            older.stop.cancel();
        }
        self.changed.notify_one();
        (serial, stop)
    }

    pub fn heartbeat(&self, name: &str, serial: u64, now_ms: u64) {
        if let Some(session) = self.lock().get_mut(name).filter(|s| s.serial == serial) {
            session.last_heartbeat = Instant::now();
            session.last_heartbeat_ms = now_ms;
        }
    }

    /// Notes that a session ended. Its last heartbeat is kept: the agent counts as alive until
    /// it has been silent for the TTL, as it keeps running what it holds while it reconnects
    /// (DESIGN §7.2, §7.4); a closed stream alone does not move its leases.
    pub fn unregister(&self, name: &str, serial: u64) {
        if let Some(session) = self.lock().get_mut(name).filter(|s| s.serial == serial) {
            session.open = false;
            session.told.clear();
            session.runs_told.clear();
            session.cancels_told.clear();
        }
        self.changed.notify_one();
    }

    /// Drops every session: this server is no longer the leader, agents must reconnect.
    pub fn clear(&self) {
        for (_, session) in self.lock().drain() {
            session.stop.cancel();
        }
    }

    pub fn views(&self) -> Vec<SessionView> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(name, s)| SessionView {
                name: name.clone(),
                alive: now.duration_since(s.last_heartbeat) <= self.ttl,
                connected: s.open,
                labels: s.labels.clone(),
                capacity: s.capacity,
                last_heartbeat_ms: s.last_heartbeat_ms,
                told: s.told.clone(),
            })
            .collect()
    }

    /// Sends the cancellation of `run` once per session. Returns whether it was sent now.
    pub fn tell_cancel(&self, name: &str, run: &str, message: ServerMessage) -> bool {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(name) else { return false };
        if session.cancels_told.contains(run) || session.tx.try_send(Ok(message)).is_err() {
            return false;
        }
        session.cancels_told.insert(run.to_string());
        true
    }

    /// Sends the start of `run` once per session, and only to a session that was told it holds
    /// `pipeline` at `needs.epoch` with the workflow of `needs.workflow` or a later one: a start
    /// never overtakes its grant. Returns whether it was sent now.
    pub fn tell_start(&self, name: &str, pipeline: &str, needs: Told, run: &str, message: ServerMessage) -> bool {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(name) else { return false };
        if !session.told.get(pipeline).is_some_and(|told| told.epoch == needs.epoch && told.workflow >= needs.workflow)
            || session.runs_told.contains(&(run.to_string(), needs.epoch))
            || session.tx.try_send(Ok(message)).is_err()
        {
            return false;
        }
        session.runs_told.insert((run.to_string(), needs.epoch));
        true
    }

    /// Whether `name` has an open session now (the scheduler's views are a pass old).
    pub fn connected(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|s| s.open)
    }

    /// Whether `name`'s current session was already told to start `run` under `epoch`.
    pub fn was_told_run(&self, name: &str, run: &str, epoch: u64) -> bool {
        self.lock().get(name).is_some_and(|s| s.runs_told.contains(&(run.to_string(), epoch)))
    }

    /// Sends a message to a connected agent, if it is connected.
    pub fn send(&self, name: &str, message: ServerMessage) -> bool {
        self.lock().get(name).is_some_and(|s| s.tx.try_send(Ok(message)).is_ok())
    }

    /// Sends `message` to `name` and records what it was told about `pipeline`
    /// (`Some` for a grant, `None` for a revoke). Returns whether it was queued.
    pub fn tell(&self, name: &str, pipeline: &str, told: Option<Told>, message: ServerMessage) -> bool {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(name) else { return false };
        if session.tx.try_send(Ok(message)).is_err() {
            return false;
        }
        match told {
            Some(told) => session.told.insert(pipeline.to_string(), told),
            None => session.told.remove(pipeline),
        };
        true
    }
}
