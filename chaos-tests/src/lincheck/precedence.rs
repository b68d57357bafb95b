//! A check before the search: an operation that needs a state which, by the order the
//! history forces on its operations, is certainly gone when the operation takes effect.
//!
//! Suppose reads a, b, c follow each other in real time and return `x`, `y`, `x`, with one
//! write of each value. The write of `x` must precede a (the only way a can see `x`), a
//! precedes b, b sees `y`, and b precedes c; so `x` was replaced between its write and c.
//! No linearization can place c, but the search would only find out after trying every
//! order of everything before b returned, which with many concurrent clients is
//! exponential. Reasoning about precedence finds it in polynomial time, so most violations
//! of highly concurrent histories are reported at once; the search still finds the others.
//!
//! Precedence starts as real time (`p` precedes `q` if `p` returned before `q` was called)
//! and grows, to a fixed point, by one rule: if an operation needs a state that only one
//! operation can still have produced for it, that operation precedes it.

use super::bitset::Bitset;
use super::history::Operation;
use super::model::{Footprint, Produces};

/// Beyond this many operations the quadratic-size precedence relation is not built and the
/// search alone decides; per-key histories are normally far smaller.
const MAX_OPERATIONS: usize = 4000;

/// Why a possible source of a needed state cannot be the one the operation sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Excluded {
    /// `source` (an operation, or `None` for the initial state) produced the state, but
    /// `by`, which returned and sees or leaves a different state, must take effect after
    /// `source` and before the operation.
    Replaced { source: Option<usize>, by: usize },
    /// `source` could produce the state, but must take effect after the operation.
    Later { source: usize },
}

/// A returned operation none of whose possible sources can be the one it sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Impossible {
    pub(crate) op: usize,
    pub(crate) sources: Vec<Excluded>,
}

/// The precedence relation as rows and columns of bits.
struct Precedence {
    /// `after[i]`: the operations that must take effect after `i`.
    after: Vec<Bitset>,
    /// `before[j]`: the operations that must take effect before `j`.
    before: Vec<Bitset>,
}

impl Precedence {
    fn real_time<I, O>(ops: &[&Operation<I, O>]) -> Self {
        let n = ops.len();
        let mut after = vec![Bitset::new(n); n];
        let mut before = vec![Bitset::new(n); n];
        for (i, op) in ops.iter().enumerate() {
            let Some(returned) = op.return_time() else {
                continue;
            };
            for (j, other) in ops.iter().enumerate() {
                if returned < other.call {
                    after[i].insert(j);
                    before[j].insert(i);
                }
            }
        }
        Self { after, before }
    }

    fn precedes(&self, p: usize, q: usize) -> bool {
        self.after[p].contains(q)
    }

    /// Adds `p` before `q` and everything that follows by transitivity.
    fn add(&mut self, p: usize, q: usize) {
        let mut later = self.after[q].clone();
        later.insert(q);
        let mut earlier = self.before[p].clone();
        earlier.insert(p);
        for i in earlier.iter() {
            self.after[i].union_with(&later);
        }
        for j in later.iter() {
            self.before[j].union_with(&earlier);
        }
    }
}

/// The earliest-called returned operation of `ops` that cannot take effect, if the
/// precedence reasoning finds one. `footprints[i]` belongs to `ops[i]`.
///
/// Sound by this argument. Let R need state s. In a linearization, R sees the state set by
/// the last operation before it that changed the state, or the initial state if none did.
/// A source that must come after R is not before it. A source p (or the initial state) is
/// not the last either if a returned operation X that sees a state other than s or always
/// leaves one must come after p and before R: at X the state is not s, so a later source
/// would be needed. If every source is excluded, R cannot take effect. The precedence rule
/// is sound for the same reason: if all but one source are excluded, R sees that one, so
/// it comes first.
pub(crate) fn find_impossible<S: Eq, I, O>(
    ops: &[&Operation<I, O>],
    footprints: &[Footprint<S>],
    initial: &S,
) -> Option<Impossible> {
    let n = ops.len();
    if n > MAX_OPERATIONS || footprints.iter().any(|footprint| footprint.produces == Produces::Unknown) {
        return None;
    }
    let mut requirers: Vec<usize> =
        (0..n).filter(|&op| !ops[op].is_indeterminate() && footprints[op].requires.is_some()).collect();
    requirers.sort_by_key(|&op| (ops[op].call, op));

    let mut precedence = Precedence::real_time(ops);
    // Each round either adds a precedence or ends; the bound only guards the running time.
    for _round in 0..n.max(1) {
        let mut grew = false;
        for &reader in &requirers {
            let Some(needed) = footprints[reader].requires.as_ref() else {
                continue;
            };
            // Returned operations that certainly see or leave a state other than `needed`.
            let mut separators = Bitset::new(n);
            for x in 0..n {
                if x == reader || ops[x].is_indeterminate() {
                    continue;
                }
                let sees_other = footprints[x].requires.as_ref().is_some_and(|s| s != needed);
                let leaves_other = matches!(&footprints[x].produces, Produces::Always(s) if s != needed);
                if sees_other || leaves_other {
                    separators.insert(x);
                }
            }
            let separated = |source: Option<usize>| {
                let everything;
                let after_source = match source {
                    Some(source) => &precedence.after[source],
                    None => {
                        everything = full(n);
                        &everything
                    }
                };
                after_source.meets(&precedence.before[reader], &separators)
            };

            let mut live = Vec::new();
            let mut excluded = Vec::new();
            if initial == needed {
                match separated(None) {
                    Some(by) => excluded.push(Excluded::Replaced { source: None, by }),
                    None => live.push(None),
                }
            }
            for (source, footprint) in footprints.iter().enumerate() {
                let produces_needed = match &footprint.produces {
                    Produces::Maybe(state) | Produces::Always(state) => state == needed,
                    Produces::Nothing | Produces::Unknown => false,
                };
                if source == reader || !produces_needed {
                    continue;
                }
                if precedence.precedes(reader, source) {
                    excluded.push(Excluded::Later { source });
                } else if let Some(by) = separated(Some(source)) {
                    excluded.push(Excluded::Replaced { source: Some(source), by });
                } else {
                    live.push(Some(source));
                    if live.len() > 1 {
                        break;
                    }
                }
            }
            match live.as_slice() {
                [] => return Some(Impossible { op: reader, sources: excluded }),
                [Some(source)] if !precedence.precedes(*source, reader) => {
                    precedence.add(*source, reader);
                    grew = true;
                }
                _ => {}
            }
        }
        if !grew {
            break;
        }
    }
    None
}

/// The set of all indices below `n`.
fn full(n: usize) -> Bitset {
    let mut set = Bitset::new(n);
    (0..n).for_each(|i| set.insert(i));
    set
}
