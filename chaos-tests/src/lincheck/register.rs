//! The per-key register model of Xene's key-value store: put, get, compare-and-set, delete.
//!
//! The state is the key's value or its absence. Revisions are deliberately not modelled:
//! they are global Raft log indices, so one key's history cannot predict them; checking that
//! revisions only grow is a separate, simpler check.

use std::collections::BTreeSet;
use std::fmt;

use super::history::{Completion, KeyedOperation, Operation};
use super::model::{Footprint, Model, Produces};

/// Bytes shown as a string when they are printable UTF-8, otherwise as hex.
fn fmt_bytes(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.is_empty() && text.chars().all(|c| c.is_ascii_graphic()) => {
            write!(f, "{text:?}")
        }
        _ => {
            f.write_str("0x")?;
            bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

/// A key of the store.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key(pub Vec<u8>);

/// A value stored under a key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Value(pub Vec<u8>);

macro_rules! bytes_newtype {
    ($name:ident) => {
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_bytes(&self.0, f)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_bytes(&self.0, f)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.as_bytes().to_vec())
            }
        }
        impl From<Vec<u8>> for $name {
            fn from(bytes: Vec<u8>) -> Self {
                Self(bytes)
            }
        }
        impl From<&[u8]> for $name {
            fn from(bytes: &[u8]) -> Self {
                Self(bytes.to_vec())
            }
        }
    };
}
bytes_newtype!(Key);
bytes_newtype!(Value);

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    Put(Value),
    Get,
    /// Write `new` if the current value equals `expected`; `None` means "if absent".
    CompareAndSet {
        expected: Option<Value>,
        new: Value,
    },
    Delete,
}

/// What the store answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    Put,
    /// The value read, or `None` if the key was absent.
    Get(Option<Value>),
    /// Whether the compare succeeded (and the write happened).
    CompareAndSet(bool),
    /// Whether the key existed before the delete, if the client learned it.
    Delete {
        existed: Option<bool>,
    },
}

/// The state of one key: its value, or `None` if absent.
pub type RegisterState = Option<Value>;

/// One operation on one key.
pub type RegisterOperation = Operation<RegisterInput, RegisterOutput>;

/// One operation of a key-value history.
pub type KvOperation = KeyedOperation<Key, RegisterInput, RegisterOutput>;

/// The value [`RegisterModel::stand_in`] uses for values nobody reads any more. Were a
/// history to read it, the search would notice and not merge.
const STAND_IN: &[u8] = b"\0xene-lincheck: a value no operation left reads\0";

/// The value an operation writes, if it writes one.
fn written(operation: &RegisterOperation) -> Option<&Value> {
    match &operation.input {
        RegisterInput::Put(value) | RegisterInput::CompareAndSet { new: value, .. } => Some(value),
        _ => None,
    }
}

/// The register model; every key starts absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        None
    }

    fn step(&self, state: &RegisterState, input: &RegisterInput, output: &RegisterOutput) -> Option<RegisterState> {
        match (input, output) {
            (RegisterInput::Put(value), RegisterOutput::Put) => Some(Some(value.clone())),
            (RegisterInput::Get, RegisterOutput::Get(read)) => (read == state).then(|| state.clone()),
            (RegisterInput::CompareAndSet { expected, new }, RegisterOutput::CompareAndSet(ok)) => {
                match (expected == state, ok) {
                    (true, true) => Some(Some(new.clone())),
                    (false, false) => Some(state.clone()),
                    _ => None,
                }
            }
            (RegisterInput::Delete, RegisterOutput::Delete { existed }) => match existed {
                Some(existed) if *existed != state.is_some() => None,
                _ => Some(None),
            },
            _ => None,
        }
    }

    fn step_indeterminate(&self, state: &RegisterState, input: &RegisterInput) -> Option<RegisterState> {
        Some(match input {
            RegisterInput::Put(value) => Some(value.clone()),
            RegisterInput::Get => state.clone(),
            RegisterInput::CompareAndSet { expected, new } if expected == state => Some(new.clone()),
            RegisterInput::CompareAndSet { .. } => state.clone(),
            RegisterInput::Delete => None,
        })
    }

    fn output_fits(&self, input: &RegisterInput, output: &RegisterOutput) -> bool {
        matches!(
            (input, output),
            (RegisterInput::Put(_), RegisterOutput::Put)
                | (RegisterInput::Get, RegisterOutput::Get(_))
                | (RegisterInput::CompareAndSet { .. }, RegisterOutput::CompareAndSet(_))
                | (RegisterInput::Delete, RegisterOutput::Delete { .. })
        )
    }

    fn footprint(&self, input: &RegisterInput, output: Option<&RegisterOutput>) -> Footprint<RegisterState> {
        let (requires, produces) = match (input, output) {
            (RegisterInput::Put(value), _) => (None, Produces::Always(Some(value.clone()))),
            (RegisterInput::Get, Some(RegisterOutput::Get(read))) => (Some(read.clone()), Produces::Nothing),
            (RegisterInput::Get, _) => (None, Produces::Nothing),
            (RegisterInput::CompareAndSet { expected, new }, Some(RegisterOutput::CompareAndSet(true))) => {
                (Some(expected.clone()), Produces::Always(Some(new.clone())))
            }
            (RegisterInput::CompareAndSet { .. }, Some(_)) => (None, Produces::Nothing),
            // Unknown outcome: it may have failed and left the state alone.
            (RegisterInput::CompareAndSet { new, .. }, None) => (None, Produces::Maybe(Some(new.clone()))),
            (RegisterInput::Delete, Some(RegisterOutput::Delete { existed: Some(false) })) => {
                (Some(None), Produces::Always(None))
            }
            (RegisterInput::Delete, _) => (None, Produces::Always(None)),
        };
        let observes = match (input, output) {
            (RegisterInput::Get, Some(RegisterOutput::Get(read))) => vec![read.clone()],
            (RegisterInput::CompareAndSet { expected, .. }, _) => vec![expected.clone()],
            // Whether the key existed tells absent apart from every value.
            (RegisterInput::Delete, Some(RegisterOutput::Delete { existed: Some(_) })) => vec![None],
            _ => Vec::new(),
        };
        Footprint { requires, produces, observes }
    }

    /// Any value nobody will read any more stands for all such values; absence stays
    /// itself, because a delete that reports whether the key existed tells it apart.
    fn stand_in(&self, state: &RegisterState) -> Option<RegisterState> {
        state.as_ref().map(|_| Some(Value(STAND_IN.to_vec())))
    }

    /// Replaces every written value that no operation observes (no get returns it and no
    /// compare-and-set expects it) by one representative of them.
    ///
    /// Such values are indistinguishable: every comparison the model makes is with an
    /// observed value, so each of them compares unequal, and each counts as "present" for a
    /// delete. Merging them lets the cache recognise states that differ only by which
    /// unread value is current.
    fn canonicalize(&self, operations: &[&RegisterOperation]) -> Option<Vec<RegisterOperation>> {
        let mut observed: BTreeSet<&Value> = BTreeSet::new();
        for operation in operations {
            if let RegisterInput::CompareAndSet { expected: Some(value), .. } = &operation.input {
                observed.insert(value);
            }
            if let Some(RegisterOutput::Get(Some(value))) = operation.output() {
                observed.insert(value);
            }
        }
        let unobserved: BTreeSet<&Value> = operations
            .iter()
            .filter_map(|operation| written(operation))
            .filter(|value| !observed.contains(value))
            .collect();
        // The least unobserved value stands for all of them; with fewer than two there is
        // nothing to merge.
        let representative = match unobserved.len() {
            0 | 1 => return None,
            _ => unobserved.first().copied()?.clone(),
        };
        let merge = |value: &Value| {
            if observed.contains(value) {
                value.clone()
            } else {
                representative.clone()
            }
        };
        let rewritten = operations
            .iter()
            .map(|operation| {
                let input = match &operation.input {
                    RegisterInput::Put(value) => RegisterInput::Put(merge(value)),
                    RegisterInput::CompareAndSet { expected, new } => {
                        RegisterInput::CompareAndSet { expected: expected.clone(), new: merge(new) }
                    }
                    other => other.clone(),
                };
                let completion = match &operation.completion {
                    Completion::Returned { at, output } => Completion::Returned { at: *at, output: output.clone() },
                    Completion::Indeterminate => Completion::Indeterminate,
                };
                Operation { client: operation.client, input, call: operation.call, completion }
            })
            .collect();
        Some(rewritten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Value> {
        Some(Value::from(s))
    }

    #[test]
    fn steps_follow_the_register_semantics() {
        let m = RegisterModel;
        let put = RegisterInput::Put(Value::from("a"));
        assert_eq!(m.step(&None, &put, &RegisterOutput::Put), Some(v("a")));
        assert_eq!(m.step(&v("a"), &RegisterInput::Get, &RegisterOutput::Get(v("a"))), Some(v("a")));
        assert_eq!(m.step(&v("a"), &RegisterInput::Get, &RegisterOutput::Get(None)), None);
        let cas = RegisterInput::CompareAndSet { expected: None, new: Value::from("b") };
        assert_eq!(m.step(&None, &cas, &RegisterOutput::CompareAndSet(true)), Some(v("b")));
        assert_eq!(m.step(&v("a"), &cas, &RegisterOutput::CompareAndSet(true)), None);
        assert_eq!(m.step(&v("a"), &cas, &RegisterOutput::CompareAndSet(false)), Some(v("a")));
        let del = |existed| RegisterOutput::Delete { existed };
        assert_eq!(m.step(&v("a"), &RegisterInput::Delete, &del(Some(true))), Some(None));
        assert_eq!(m.step(&None, &RegisterInput::Delete, &del(Some(true))), None);
        assert_eq!(m.step(&None, &RegisterInput::Delete, &del(None)), Some(None));
        assert_eq!(m.step(&None, &put, &RegisterOutput::Get(None)), None);
        assert!(!m.output_fits(&put, &RegisterOutput::Get(None)));
    }

    #[test]
    fn values_print_readably() {
        assert_eq!(format!("{:?}", Value::from("a")), "\"a\"");
        assert_eq!(format!("{:?}", Value(vec![0, 255])), "0x00ff");
        assert_eq!(format!("{}", Key::from("")), "0x");
    }
}
