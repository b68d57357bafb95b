//! The recorded history a checker consumes: operations with their call and return times.
//!
//! A history is what clients observed, not what the servers did: each operation has the time
//! its client called it and, if the client learned the outcome, the time it returned and the
//! output. An operation whose outcome the client never learned (a timeout, a dropped
//! connection) is [`Completion::Indeterminate`]: it may have taken effect at any point after
//! its call, or never.

use std::fmt;

/// A point on the clock shared by every client of one history, in units the harness chooses
/// (nanoseconds since the start of the test, for example).
///
/// Only the order of times matters. A call and a return at the same time are treated as
/// concurrent, so a coarse clock can make the checker more permissive but never makes it
/// report a violation that did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The client that issued an operation. The checker uses it only in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// How an operation ended, as far as its client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion<O> {
    /// The client received `output` at time `at`.
    Returned { at: Time, output: O },
    /// The client never learned the outcome: the operation may have taken effect at any
    /// point after its call (its return time is treated as +infinity), or not at all.
    Indeterminate,
}

/// One operation of a single-object history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: ClientId,
    pub input: I,
    pub call: Time,
    pub completion: Completion<O>,
}

impl<I, O> Operation<I, O> {
    /// An operation whose client received `output` at `returned`.
    pub fn returned(client: ClientId, input: I, call: Time, returned: Time, output: O) -> Self {
        Self { client, input, call, completion: Completion::Returned { at: returned, output } }
    }

    /// An operation whose outcome is unknown (it timed out or its connection failed).
    pub fn indeterminate(client: ClientId, input: I, call: Time) -> Self {
        Self { client, input, call, completion: Completion::Indeterminate }
    }

    /// The return time, or `None` for an indeterminate operation (which never returns).
    pub fn return_time(&self) -> Option<Time> {
        match &self.completion {
            Completion::Returned { at, .. } => Some(*at),
            Completion::Indeterminate => None,
        }
    }

    /// The output, or `None` for an indeterminate operation.
    pub fn output(&self) -> Option<&O> {
        match &self.completion {
            Completion::Returned { output, .. } => Some(output),
            Completion::Indeterminate => None,
        }
    }

    pub fn is_indeterminate(&self) -> bool {
        matches!(self.completion, Completion::Indeterminate)
    }
}

impl<I: fmt::Debug, O: fmt::Debug> fmt::Display for Operation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.completion {
            Completion::Returned { at, output } => {
                write!(f, "{} [{}, {}] {:?} -> {:?}", self.client, self.call, at, self.input, output)
            }
            Completion::Indeterminate => {
                write!(f, "{} [{}, ?] {:?} -> indeterminate", self.client, self.call, self.input)
            }
        }
    }
}

/// An operation on one object of a multi-object store, such as one key of a key-value store.
///
/// Histories of these are split by `key` and each key is checked on its own; this is sound
/// because linearizability is compositional (Herlihy and Wing, 1990).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedOperation<K, I, O> {
    pub key: K,
    pub operation: Operation<I, O>,
}
