//! The pipelines this agent holds, by lease. A lease is kept across reconnects until the
//! leader revokes it or grants it again with a newer epoch (DESIGN §7.2, §7.5).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub epoch: u64,
    /// The workflow as the leader sent it, JSON.
    pub workflow_json: String,
    /// Where each cron trigger of the pipeline resumes (Unix ms), as the leader sent it.
    pub cron_since_ms: BTreeMap<String, i64>,
}

/// Leases by pipeline name (`WORKFLOW/PIPELINE`).
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<BTreeMap<String, HeldLease>>,
    /// Woken on every grant and revocation (the cron controller waits on it).
    pub changed: tokio::sync::Notify,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a grant; an older epoch never replaces a newer one.
    pub fn grant(&self, pipeline: &str, lease: HeldLease) -> bool {
        {
            let mut held = self.lock();
            if held.get(pipeline).is_some_and(|h| h.epoch > lease.epoch) {
                return false;
            }
            held.insert(pipeline.to_string(), lease);
        }
        self.changed.notify_waiters();
        true
    }

    /// Drops a pipeline whose lease (at `epoch` or older) was revoked.
    pub fn revoke(&self, pipeline: &str, epoch: u64) -> bool {
        let removed = {
            let mut held = self.lock();
            held.get(pipeline).is_some_and(|h| h.epoch <= epoch) && held.remove(pipeline).is_some()
        };
        if removed {
            self.changed.notify_waiters();
        }
        removed
    }

    /// The lease held on `pipeline`, if any.
    pub fn get(&self, pipeline: &str) -> Option<HeldLease> {
        self.lock().get(pipeline).cloned()
    }

    /// The workflow JSON of `pipeline` if it is held at exactly `epoch`.
    pub fn workflow_of(&self, pipeline: &str, epoch: u64) -> Option<String> {
        self.lock().get(pipeline).filter(|h| h.epoch == epoch).map(|h| h.workflow_json.clone())
    }

    /// (pipeline, epoch) of everything held.
    pub fn list(&self) -> Vec<(String, u64)> {
        self.lock().iter().map(|(p, h)| (p.clone(), h.epoch)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_epochs_win_and_stale_revokes_are_ignored() {
        let leases = Leases::default();
        let at = |epoch| HeldLease { epoch, workflow_json: "{}".into(), cron_since_ms: BTreeMap::new() };
        assert!(leases.grant("w/p", at(10)));
        assert!(!leases.grant("w/p", at(9)), "an older grant does not replace a newer one");
        assert!(leases.grant("w/p", at(12)));
        assert!(!leases.revoke("w/p", 10), "revoking an older epoch leaves the newer lease");
        assert_eq!(leases.list(), vec![("w/p".to_string(), 12)]);
        assert!(leases.revoke("w/p", 12));
        assert!(leases.list().is_empty());
    }
}
