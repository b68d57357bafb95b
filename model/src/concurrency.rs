//! [`Concurrency`]: what happens when a pipeline is started while a run of it
//! is in progress (DESIGN §8.4).

use serde::{Deserialize, Serialize};

/// A pipeline's concurrency settings.
///
/// ```yaml
/// concurrency: {policy: Forbid}
/// concurrency: {policy: Allow, maxConcurrent: 3}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concurrency {
    /// The policy; unset means [`ConcurrencyPolicy::Allow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ConcurrencyPolicy>,
    /// With `Allow`, the most runs at once; further runs wait. Unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl Concurrency {
    /// The policy in force.
    pub fn policy(&self) -> ConcurrencyPolicy {
        self.policy.unwrap_or_default()
    }
}

/// What a new run does when another run of the pipeline is in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConcurrencyPolicy {
    /// Run alongside it (the default), up to `maxConcurrent`.
    #[default]
    Allow,
    /// Wait in a queue until it ends.
    Forbid,
    /// Cancel it and start.
    Replace,
}

impl ConcurrencyPolicy {
    /// Every policy with its name as written in manifests.
    pub const ALL: [(&'static str, Self); 3] =
        [("Allow", Self::Allow), ("Forbid", Self::Forbid), ("Replace", Self::Replace)];
}
