//! [`RetryPolicy`]: how often and how soon a failed task, or a run whose agent
//! was lost, is tried again (DESIGN §7.4, §9.6).

use serde::{Deserialize, Serialize};

use crate::Duration;

/// Retries with exponential backoff and a cap.
///
/// On a task it retries the task; on a pipeline it retries a run whose agent
/// was lost on the pipeline's new holder (DESIGN §7.4).
///
/// ```yaml
/// retries: {limit: 2, backoff: 5s, maxBackoff: 1m}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// How many times to try again after the first attempt.
    pub limit: u32,
    /// The wait before the first retry, doubled for each one after;
    /// unset means [`RetryPolicy::DEFAULT_BACKOFF`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
    /// The longest wait; unset means [`RetryPolicy::DEFAULT_MAX_BACKOFF`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
}

impl RetryPolicy {
    /// The first wait when `backoff` is unset.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
    /// The longest wait when `maxBackoff` is unset.
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);

    /// The wait before retry number `retry` (1 for the first retry):
    /// `backoff × 2^(retry-1)`, at most `maxBackoff`.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.backoff.unwrap_or(Self::DEFAULT_BACKOFF).as_millis();
        let cap = self.max_backoff.unwrap_or(Self::DEFAULT_MAX_BACKOFF).as_millis().max(base);
        let factor = 1u64.checked_shl(retry.saturating_sub(1)).unwrap_or(u64::MAX);
        Duration::from_millis(base.saturating_mul(factor).min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy =
            RetryPolicy { limit: 5, backoff: Some(Duration::from_secs(5)), max_backoff: Some(Duration::from_secs(30)) };
        let delays: Vec<u64> = (1..=6).map(|r| policy.delay(r).as_millis() / 1000).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30, 30]);
        assert_eq!(RetryPolicy::default().delay(1), RetryPolicy::DEFAULT_BACKOFF);
        assert_eq!(policy.delay(200).as_millis(), 30_000);
    }
}
