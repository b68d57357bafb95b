//! A linearizability checker for recorded histories, in the style of porcupine
//! (Wing–Gong search with Lowe's cache), used by the key-value chaos tests (DESIGN §14).
//!
//! - [`history`]: operations with call and return times; an operation whose outcome is
//!   unknown is indeterminate.
//! - [`model`]: the [`Model`] trait, the sequential specification to check against, and the
//!   optional [`Footprint`]s that let the checker prune.
//! - [`register`]: the per-key register model of the key-value store (put, get,
//!   compare-and-set, delete).
//! - [`checker`]: the search for one object, [`check_operations`], with a step [`Budget`];
//!   it is preceded by a precedence pre-check (`precedence.rs`) and pruned by `supply.rs`.
//! - [`partition`]: [`check_keyed`] and [`check_kv_history`] split a history by key and
//!   report per key.
//! - [`text`]: a line-per-operation text form of key-value histories.
//! - [`witness`]: [`verify_witness`] re-checks a witness order without the search.
//!
//! A check ends in one of three ways: linearizable (with a witness order), a violation
//! (with the operation that cannot be placed, why, and the longest linearizable prefix the
//! search found), or unknown when the budget ran out, which callers must treat as a
//! failure. The checker is deterministic: the same history and step budget give the same
//! result.

pub mod checker;
pub mod error;
pub mod history;
pub mod model;
pub mod partition;
pub mod register;
pub mod text;
pub mod witness;

mod bitset;
mod entries;
mod precedence;
mod supply;

pub use checker::{check_operations, Budget, Cause, Checked, Exhausted, Explanation, Limit, Outcome, Stats};
pub use error::HistoryError;
pub use history::{ClientId, Completion, KeyedOperation, Operation, Time};
pub use model::{Footprint, Model, Produces};
pub use partition::{check_keyed, check_kv_history, KeyReport, Report, Verdict};
pub use precedence::Excluded;
pub use register::{
    Key, KvOperation, RegisterInput, RegisterModel, RegisterOperation, RegisterOutput, RegisterState, Value,
};
pub use text::{format_kv_history, parse_kv_history, ParseError};
pub use witness::verify_witness;
