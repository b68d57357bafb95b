//! Whether this server's leadership was confirmed by a quorum lately, without a Raft round
//! per question (DESIGN §7.5).
//!
//! A leader cut off from the others keeps believing it leads (`ServerState::Leader` in its
//! own metrics) until it hears of a higher term. Agents must not take its word: it would keep
//! them running what the real leader hands to other agents after the TTL. openraft's leader
//! keeps, per voter, the time it *sent* the last AppendEntries (heartbeats included) that the
//! voter accepted, and reports how long ago a quorum last did (`millis_since_quorum_ack`) in
//! the metrics it publishes on every turn of its loop (at least once per heartbeat interval).
//! [`follow`] turns each report into an instant; a heartbeat is acknowledged only while that
//! instant is within [`Timing::election_min`](crate::node::Timing) of now.
//!
//! Why that bound is safe: a voter grants its vote to a new leader only after it has not heard
//! from the old one for the leader lease ([`Timing::leader_lease`](crate::node::Timing): the
//! shortest election timeout and a heartbeat, at most the largest, in the vendored openraft),
//! and a voter that voted for a newer term refuses the old leader. So a new leader's term
//! begins at least a lease after the last quorum acknowledgement the old leader can count, and
//! an acknowledgement given within `election_min` of that instant precedes the new term, with
//! a heartbeat interval to spare for clocks that run at different rates. An agent counts its
//! TTL from when it sent the acknowledged heartbeat, and the new leader gives a silent agent's
//! leases away only a TTL after its term began, so the agent stops first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;
use xene_raft_store::Raft;

/// The instant until which this server may speak as the leader, as microseconds since
/// `origin` (0: not confirmed).
pub struct Confirmation {
    origin: Instant,
    until_micros: AtomicU64,
}

impl Default for Confirmation {
    fn default() -> Self {
        Confirmation { origin: Instant::now(), until_micros: AtomicU64::new(0) }
    }
}

impl Confirmation {
    /// Whether a quorum acknowledged this server as the leader recently enough (see the
    /// module docs) that what it says to agents now cannot contradict a newer leader.
    pub fn holds(&self) -> bool {
        (self.origin.elapsed().as_micros() as u64) < self.until_micros.load(Ordering::Acquire)
    }

    fn set_until(&self, until: Option<Instant>) {
        let micros = until.map_or(0, |until| until.saturating_duration_since(self.origin).as_micros() as u64);
        self.until_micros.store(micros, Ordering::Release);
    }
}

/// Follows Raft's metrics for the life of the server, keeping `confirmation` current: after
/// each report, confirmed until the quorum's last acknowledgement plus `valid_for`. Ends when
/// `stop` is cancelled or Raft shuts down (its metrics channel closes).
pub async fn follow(
    raft: Raft,
    confirmation: std::sync::Arc<Confirmation>,
    valid_for: Duration,
    stop: CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        let acked_at = {
            let m = metrics.borrow_and_update();
            match (m.state, m.millis_since_quorum_ack) {
                // The report truncates to whole milliseconds and is read a moment after it was
                // made: take the acknowledgement a millisecond earlier than it says, so the
                // estimate is never later than the truth by more than the time to wake here.
                (ServerState::Leader, Some(ms)) => Instant::now().checked_sub(Duration::from_millis(ms + 1)),
                _ => None,
            }
        };
        confirmation.set_until(acked_at.map(|at| at + valid_for));
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
    confirmation.set_until(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_before_the_instant_set() {
        let confirmation = Confirmation::default();
        assert!(!confirmation.holds(), "a fresh server is not confirmed");
        confirmation.set_until(Some(Instant::now() + Duration::from_secs(60)));
        assert!(confirmation.holds());
        confirmation.set_until(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!confirmation.holds(), "an instant in the past no longer holds");
        confirmation.set_until(Some(Instant::now() + Duration::from_secs(60)));
        confirmation.set_until(None);
        assert!(!confirmation.holds(), "losing leadership clears it");
    }
}
