//! Checking a multi-key history one key at a time.
//!
//! Linearizability is compositional: a history is linearizable exactly when each object's
//! sub-history is (Herlihy and Wing, 1990). Splitting by key turns one search exponential in
//! the whole history into many small ones, and lets a report say which key went wrong.

use std::collections::BTreeMap;
use std::fmt::{Debug, Write as _};

use super::checker::{search, validate, Budget, Explanation, Outcome, Stats};
use super::error::Result;
use super::history::{KeyedOperation, Operation};
use super::model::Model;
use super::register::{Key, KvOperation, RegisterModel, RegisterState};

/// The overall verdict of a [`Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key is linearizable.
    Linearizable,
    /// At least one key is not.
    Violation,
    /// No key is known to be violated, but at least one ran out of budget. Not a pass.
    Unknown,
}

/// The outcome for one key. Operation numbers are indices into the whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport<K, S> {
    pub key: K,
    /// This key's operations, as indices into the whole history, in history order.
    pub operations: Vec<usize>,
    pub outcome: Outcome<S>,
    pub stats: Stats,
}

/// The outcome for every key of a history, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<K, S> {
    pub keys: Vec<KeyReport<K, S>>,
}

impl<K, S> Report<K, S> {
    /// `Violation` if any key is violated, else `Unknown` if any key ran out of budget.
    pub fn verdict(&self) -> Verdict {
        let outcomes = || self.keys.iter().map(|key| &key.outcome);
        if outcomes().any(|o| matches!(o, Outcome::Violation(_))) {
            Verdict::Violation
        } else if outcomes().any(|o| matches!(o, Outcome::Unknown(_))) {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        }
    }

    pub fn is_linearizable(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }

    /// The violated keys with their explanations.
    pub fn violations(&self) -> impl Iterator<Item = (&K, &Explanation<S>)> {
        self.keys.iter().filter_map(|key| match &key.outcome {
            Outcome::Violation(explanation) => Some((&key.key, explanation)),
            _ => None,
        })
    }

    /// The keys whose search ran out of budget.
    pub fn unknown(&self) -> impl Iterator<Item = &K> {
        self.keys.iter().filter(|key| matches!(key.outcome, Outcome::Unknown(_))).map(|key| &key.key)
    }

    /// The key that cost the most search steps, with its statistics.
    pub fn costliest(&self) -> Option<&KeyReport<K, S>> {
        self.keys.iter().max_by_key(|key| key.stats.steps)
    }
}

impl<K: Debug, S: Debug> Report<K, S> {
    /// A human-readable account of every key that is not linearizable or not decided;
    /// `history` must be the history that was checked.
    pub fn explain<I: Debug, O: Debug>(&self, history: &[KeyedOperation<K, I, O>]) -> String {
        let lookup = |index: usize| history.get(index).map(|keyed| &keyed.operation);
        let operations: usize = self.keys.iter().map(|key| key.operations.len()).sum();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{:?}: {} operations over {} keys", self.verdict(), operations, self.keys.len());
        for key in &self.keys {
            match &key.outcome {
                Outcome::Linearizable { .. } => {}
                Outcome::Violation(explanation) => {
                    let _ =
                        writeln!(out, "key {:?} is not linearizable ({} operations):", key.key, key.operations.len());
                    out.push_str(&explanation.render(lookup));
                }
                Outcome::Unknown(exhausted) => {
                    let _ = writeln!(
                        out,
                        "key {:?} is undecided ({} operations): {exhausted}",
                        key.key,
                        key.operations.len()
                    );
                }
            }
        }
        out
    }
}

/// Splits `history` by key and checks each key against `model`, with `budget` per key.
///
/// Every key is checked, so the report lists all violated keys, not only the first.
pub fn check_keyed<K, M>(
    model: &M,
    history: &[KeyedOperation<K, M::Input, M::Output>],
    budget: &Budget,
) -> Result<Report<K, M::State>>
where
    K: Ord + Clone,
    M: Model,
{
    // A BTreeMap, not a HashMap, so keys are checked and reported in a fixed order.
    let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (index, keyed) in history.iter().enumerate() {
        validate(model, index, &keyed.operation)?;
        by_key.entry(&keyed.key).or_default().push(index);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, indices)| {
            let operations: Vec<&Operation<M::Input, M::Output>> =
                indices.iter().map(|&i| &history[i].operation).collect();
            let checked = search(model, &operations, budget);
            KeyReport {
                key: key.clone(),
                outcome: checked.outcome.map_indices(|local| indices[local]),
                operations: indices,
                stats: checked.stats,
            }
        })
        .collect();
    Ok(Report { keys })
}

/// Checks a key-value history with the register model, one key at a time.
pub fn check_kv_history(history: &[KvOperation], budget: &Budget) -> Result<Report<Key, RegisterState>> {
    check_keyed(&RegisterModel, history, budget)
}
