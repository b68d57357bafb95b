//! Paces the log chunks the agent ships (`--log-rate-kib`): a token bucket of bytes.
//!
//! A step can print far faster than three servers can replicate and store its lines (PERF W9:
//! 100 MB in a tenth of a second). Shipped as fast as it comes, such output takes the
//! servers' cores from leases, heartbeats and every other run, and slows the step itself on a
//! shared machine. Paced, the chunks wait in the agent (within the step's cap) and leave at
//! the set rate after a burst. A run's status waits behind its own held chunks, so a run is
//! still reported finished only after all its lines; other runs' statuses and cron fires
//! do not wait.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use xene_proto as pb;
use xene_proto::agent_message;

use crate::outbox::Outgoing;

/// A token bucket of bytes: `rate` bytes per second, holding at most `burst`.
#[derive(Debug)]
struct LogPace {
    /// Bytes per second; 0 means no limit.
    rate: f64,
    burst: f64,
    /// Bytes that may leave now; negative after a chunk larger than what was left.
    tokens: f64,
    at: Instant,
}

impl LogPace {
    /// The smallest burst: one full chunk (256 KiB of JSON) fits.
    const MIN_BURST: f64 = 256.0 * 1024.0;

    /// Ships at `kib_per_s` KiB per second (0: unlimited), after a burst of a quarter second's
    /// worth (at least one chunk).
    fn new(kib_per_s: u64, now: Instant) -> Self {
        let rate = kib_per_s as f64 * 1024.0;
        let burst = (rate / 4.0).max(Self::MIN_BURST);
        LogPace { rate, burst, tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// How long until the next chunk may leave: zero while the bucket is not in debt.
    fn wait(&mut self, now: Instant) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Counts a chunk of `bytes` that left at `now`.
    fn spend(&mut self, bytes: usize, now: Instant) {
        if self.rate == 0.0 {
            return;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
    }
}

/// The agent's outgoing writes under the log pace: log chunks beyond it, and the statuses of
/// their runs queued after them, are held in order; everything else passes.
#[derive(Debug)]
pub struct Pacer {
    pace: LogPace,
    held: VecDeque<Outgoing>,
}

/// The run a write is about, for log chunks and statuses.
fn run_of(message: &pb::AgentMessage) -> Option<&str> {
    match &message.body {
        Some(agent_message::Body::Logs(batch)) => Some(&batch.run),
        Some(agent_message::Body::RunUpdate(update)) => Some(&update.run),
        _ => None,
    }
}

impl Pacer {
    pub fn new(kib_per_s: u64, now: Instant) -> Self {
        Pacer { pace: LogPace::new(kib_per_s, now), held: VecDeque::new() }
    }

    /// Returns `message` if it may leave now (a chunk spends from the pace), or holds it.
    pub fn admit(&mut self, message: Outgoing, now: Instant) -> Option<Outgoing> {
        let wait = match &message.message.body {
            Some(agent_message::Body::Logs(_)) => !self.held.is_empty() || !self.pace.wait(now).is_zero(),
            Some(agent_message::Body::RunUpdate(update)) => {
                self.held.iter().any(|held| run_of(&held.message) == Some(update.run.as_str()))
            }
            _ => false,
        };
        if wait {
            self.held.push_back(message);
            return None;
        }
        self.spend(&message.message, now);
        Some(message)
    }

    /// The first held write, if it may leave now: a status at once, a chunk when the pace
    /// lets it.
    pub fn release(&mut self, now: Instant) -> Option<Outgoing> {
        if !self.wait(now)?.is_zero() {
            return None;
        }
        let message = self.held.pop_front()?;
        self.spend(&message.message, now);
        Some(message)
    }

    /// How long until the first held write may leave; `None` when nothing is held.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let first = self.held.front()?;
        match first.message.body {
            Some(agent_message::Body::Logs(_)) => Some(self.pace.wait(now)),
            _ => Some(Duration::ZERO),
        }
    }

    fn spend(&mut self, message: &pb::AgentMessage, now: Instant) {
        if let Some(agent_message::Body::Logs(batch)) = &message.body {
            self.pace.spend(batch.chunk_json.len(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_leaves_at_once_then_the_rate_holds() {
        let start = Instant::now();
        // 1 MiB/s: a burst of 256 KiB.
        let mut pace = LogPace::new(1024, start);
        let chunk = 64 * 1024;
        for i in 0..4 {
            assert_eq!(pace.wait(start), Duration::ZERO, "chunk {i} of the burst");
            pace.spend(chunk, start);
        }
        // The fifth chunk goes into debt and the sixth waits for it: 64 KiB at 1 MiB/s.
        assert_eq!(pace.wait(start), Duration::ZERO, "the bucket is empty, not in debt");
        pace.spend(chunk, start);
        let wait = pace.wait(start);
        assert!((wait.as_secs_f64() - 0.0625).abs() < 1e-6, "{wait:?}");
        // Once that time has passed, the next may leave.
        assert_eq!(pace.wait(start + wait), Duration::ZERO);
        // Over ten seconds at most the burst plus ten seconds' worth leaves.
        let mut now = start + wait;
        let mut sent = 0usize;
        while now < start + wait + Duration::from_secs(10) {
            let pause = pace.wait(now);
            now += pause;
            pace.spend(chunk, now);
            sent += chunk;
        }
        let most = 256 * 1024 + 10 * 1024 * 1024 + chunk;
        assert!(sent <= most && sent >= 10 * 1024 * 1024, "{sent} bytes in 10 s");
    }

    #[test]
    fn an_idle_bucket_holds_no_more_than_the_burst() {
        let start = Instant::now();
        let mut pace = LogPace::new(1024, start);
        let later = start + Duration::from_secs(60);
        pace.spend(256 * 1024, later);
        assert_eq!(pace.wait(later), Duration::ZERO, "empty, not in debt");
        pace.spend(1, later);
        assert!(pace.wait(later) > Duration::ZERO, "a minute idle does not save up a minute's worth");
    }

    fn chunk(run: &str, bytes: usize) -> pb::AgentMessage {
        let batch = pb::LogBatch { run: run.into(), epoch: 1, chunk_json: "x".repeat(bytes), first_seq: 0, seq: 0 };
        pb::AgentMessage { body: Some(agent_message::Body::Logs(batch)) }
    }

    fn status(run: &str) -> pb::AgentMessage {
        let update = pb::RunUpdate { run: run.into(), epoch: 1, run_json: String::new(), seq: 0 };
        pb::AgentMessage { body: Some(agent_message::Body::RunUpdate(update)) }
    }

    fn cron() -> pb::AgentMessage {
        let fire = pb::CronFire { pipeline: "w/p".into(), trigger: "t".into(), scheduled_ms: 0, epoch: 1, seq: 0 };
        pb::AgentMessage { body: Some(agent_message::Body::CronFire(fire)) }
    }

    /// What a write is, for comparing orders.
    fn label(message: &pb::AgentMessage) -> String {
        match &message.body {
            Some(agent_message::Body::Logs(b)) => format!("logs {} {}", b.run, b.chunk_json.len()),
            Some(agent_message::Body::RunUpdate(u)) => format!("status {}", u.run),
            Some(agent_message::Body::CronFire(_)) => "cron".into(),
            _ => "other".into(),
        }
    }

    #[test]
    fn held_chunks_keep_their_runs_statuses_behind_them_and_nothing_else() {
        let start = Instant::now();
        // 1 MiB/s: a burst of 256 KiB, one chunk.
        let mut pacer = Pacer::new(1024, start);
        let big = 256 * 1024;
        let mut sent: Vec<String> = Vec::new();
        let arrivals = [
            chunk("a", big + 10),
            chunk("a", big + 1),
            status("a"),
            status("b"),
            cron(),
            chunk("b", big + 2),
            status("b"),
        ];
        for message in arrivals {
            if let Some(out) = pacer.admit(message.into(), start) {
                sent.push(label(&out.message));
            }
        }
        // The first chunk spends more than the burst; the second waits, and so does a's
        // status; b's status and the cron fire pass; b's chunk queues behind a's, and b's next
        // status behind it.
        assert_eq!(sent, vec![format!("logs a {}", big + 10), "status b".into(), "cron".into()]);
        assert_eq!(pacer.release(start).map(|m| label(&m.message)), None, "the bucket is in debt");
        let wait = pacer.wait(start).expect("writes are held");
        assert!(!wait.is_zero(), "10 bytes of debt to wait out");
        let mut now = start;
        while let Some(wait) = pacer.wait(now) {
            now += wait;
            while let Some(out) = pacer.release(now) {
                sent.push(label(&out.message));
            }
        }
        assert_eq!(
            sent[3..],
            [format!("logs a {}", big + 1), "status a".into(), format!("logs b {}", big + 2), "status b".into()]
        );
        // The debt of the first chunk and the second (a status leaves at once): 262,155 bytes
        // at 1 MiB/s, a quarter second.
        let took = now.duration_since(start).as_secs_f64();
        assert!((0.24..0.26).contains(&took), "{took} s");
        assert_eq!(pacer.wait(now), None, "nothing is held");
    }

    #[test]
    fn zero_means_no_limit() {
        let start = Instant::now();
        let mut pace = LogPace::new(0, start);
        for _ in 0..1_000 {
            pace.spend(1 << 20, start);
        }
        assert_eq!(pace.wait(start), Duration::ZERO);
    }
}
