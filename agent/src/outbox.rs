//! What the agent's parts (runs, log shippers, cron) send the leader through the session, and
//! how a sender learns that the leader applied its write.

use tokio::sync::{mpsc, oneshot};
use xene_proto as pb;

/// One message for the leader; the session sends them in order when it is connected.
#[derive(Debug)]
pub struct Outgoing {
    pub message: pb::AgentMessage,
    /// Told once the leader has applied the write (its `WriteAck` came, which a leader sends
    /// only after the write committed); dropped unanswered only when the agent stops.
    pub applied: Option<oneshot::Sender<()>>,
}

impl From<pb::AgentMessage> for Outgoing {
    fn from(message: pb::AgentMessage) -> Self {
        Outgoing { message, applied: None }
    }
}

/// Where messages for the leader go.
pub type Outbox = mpsc::UnboundedSender<Outgoing>;

/// The session's end of an [`Outbox`].
pub type OutboxReceiver = mpsc::UnboundedReceiver<Outgoing>;
