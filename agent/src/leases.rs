//! The pipelines this agent holds, by lease. A lease is kept across reconnects until the
//! leader revokes it or grants it again with a newer epoch (DESIGN §7.2, §7.5), or at the
//! same epoch with a workflow applied since.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub epoch: u64,
    /// The workflow as the leader sent it, JSON.
    pub workflow_json: String,
    /// The revision that workflow was applied at.
    pub workflow_revision: u64,
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

    /// Takes a grant, unless what is held is newer: a later epoch, or the same epoch with a
    /// workflow applied later.
    pub fn grant(&self, pipeline: &str, lease: HeldLease) -> Granted {
        let granted = {
            let mut held = self.lock();
            let granted = match held.get(pipeline) {
                None => Granted::New,
                Some(h) if (h.epoch, h.workflow_revision) > (lease.epoch, lease.workflow_revision) => {
                    return Granted::Stale
                }
                Some(h) if h.epoch == lease.epoch && h.workflow_revision < lease.workflow_revision => {
                    Granted::WorkflowChanged
                }
                Some(h) if h.epoch == lease.epoch => Granted::Again,
                Some(_) => Granted::New,
            };
            held.insert(pipeline.to_string(), lease);
            granted
        };
        self.changed.notify_waiters();
        granted
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

    /// (pipeline, (epoch, workflow revision)) of everything held.
    pub fn versions(&self) -> Vec<(String, (u64, u64))> {
        self.lock().iter().map(|(p, h)| (p.clone(), (h.epoch, h.workflow_revision))).collect()
    }
}

/// What [`Leases::grant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// A pipeline not held before, or held at an older epoch.
    New,
    /// The same epoch with a workflow applied since: runs started from now on use it.
    WorkflowChanged,
    /// The same epoch and workflow again (a new session's leader repeating it).
    Again,
    /// Refused: what is held is newer.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_epochs_win_and_stale_revokes_are_ignored() {
        let leases = Leases::default();
        let at = |epoch| HeldLease {
            epoch,
            workflow_json: "{}".into(),
            workflow_revision: 5,
            cron_since_ms: BTreeMap::new(),
        };
        assert_eq!(leases.grant("w/p", at(10)), Granted::New);
        assert_eq!(leases.grant("w/p", at(9)), Granted::Stale, "an older grant does not replace a newer one");
        assert_eq!(leases.grant("w/p", at(12)), Granted::New);
        assert_eq!(leases.grant("w/p", at(12)), Granted::Again);
        assert!(!leases.revoke("w/p", 10), "revoking an older epoch leaves the newer lease");
        assert_eq!(leases.list(), vec![("w/p".to_string(), 12)]);
        assert!(leases.revoke("w/p", 12));
        assert!(leases.list().is_empty());
    }

    #[test]
    fn a_workflow_applied_again_replaces_the_one_held_at_the_same_epoch() {
        let leases = Leases::default();
        let at = |epoch, workflow_revision, json: &str| HeldLease {
            epoch,
            workflow_json: json.into(),
            workflow_revision,
            cron_since_ms: BTreeMap::new(),
        };
        assert_eq!(leases.grant("w/p", at(10, 5, "old")), Granted::New);
        assert_eq!(leases.grant("w/p", at(10, 8, "new")), Granted::WorkflowChanged);
        assert_eq!(leases.workflow_of("w/p", 10).as_deref(), Some("new"));
        assert_eq!(leases.grant("w/p", at(10, 5, "old")), Granted::Stale, "an older workflow does not come back");
        assert_eq!(leases.workflow_of("w/p", 10).as_deref(), Some("new"));
        assert_eq!(leases.versions(), vec![("w/p".to_string(), (10, 8))]);
        // A newer epoch wins whatever its workflow revision.
        assert_eq!(leases.grant("w/p", at(11, 3, "moved")), Granted::New);
        assert_eq!(leases.workflow_of("w/p", 11).as_deref(), Some("moved"));
    }
}
