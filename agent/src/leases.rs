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
}

/// Leases by pipeline name (`WORKFLOW/PIPELINE`).
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<BTreeMap<String, HeldLease>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a grant; an older epoch never replaces a newer one.
    pub fn grant(&self, pipeline: &str, epoch: u64, workflow_json: String) -> bool {
        let mut held = self.lock();
        if held.get(pipeline).is_some_and(|h| h.epoch > epoch) {
            return false;
        }
        held.insert(pipeline.to_string(), HeldLease { epoch, workflow_json });
        true
    }

    /// Drops a pipeline whose lease (at `epoch` or older) was revoked.
    pub fn revoke(&self, pipeline: &str, epoch: u64) -> bool {
        let mut held = self.lock();
        if held.get(pipeline).is_some_and(|h| h.epoch <= epoch) {
            held.remove(pipeline);
            return true;
        }
        false
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
        assert!(leases.grant("w/p", 10, "{}".into()));
        assert!(!leases.grant("w/p", 9, "{}".into()), "an older grant does not replace a newer one");
        assert!(leases.grant("w/p", 12, "{}".into()));
        assert!(!leases.revoke("w/p", 10), "revoking an older epoch leaves the newer lease");
        assert_eq!(leases.list(), vec![("w/p".to_string(), 12)]);
        assert!(leases.revoke("w/p", 12));
        assert!(leases.list().is_empty());
    }
}
