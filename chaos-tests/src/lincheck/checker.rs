//! The search for a linearization of one object's history (Wing–Gong with Lowe's cache, as
//! in porcupine).
//!
//! The search walks the time-ordered list of call and return entries. Any call that comes
//! before the first return in the list belongs to an operation that may take effect next;
//! the search tries them in order, lifting an operation out of the list when the model
//! accepts it. Reaching a return entry means the operation it belongs to had to take effect
//! by then and no choice so far allows it, so the search backtracks. A cache of
//! (set of linearized operations, model state) pairs already explored prunes the
//! exponential blow-up: two paths that linearized the same operations into the same state
//! have the same future.
//!
//! An indeterminate operation has no return entry, so it never forces a backtrack; the
//! search ends successfully once every operation that returned is linearized, and an
//! indeterminate one not placed by then is taken never to have happened.

use std::collections::HashMap;
use std::fmt::{self, Debug, Write as _};
use std::time::{Duration, Instant};

use super::bitset::Bitset;
use super::entries::{Entries, Entry};
use super::error::{HistoryError, Result};
use super::history::{Completion, Operation};
use super::model::Model;

/// How much work the search may do on one object before it gives up with
/// [`Outcome::Unknown`].
///
/// The step limit is deterministic: the same history and budget always give the same
/// outcome. The optional time limit is not, so a replayed failure should rely on steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The most search steps (an attempt to place, or a backtrack) per object.
    pub max_steps: u64,
    /// The most wall-clock time per object, if any.
    pub max_duration: Option<Duration>,
}

impl Budget {
    /// How many steps between two looks at the clock; reading it every step would cost
    /// more than the step.
    const CLOCK_EVERY: u64 = 1024;

    pub fn steps(max_steps: u64) -> Self {
        Self {
            max_steps,
            max_duration: None,
        }
    }

    fn exceeded(&self, steps: u64, started: Instant) -> Option<Limit> {
        if steps >= self.max_steps {
            return Some(Limit::Steps(self.max_steps));
        }
        match self.max_duration {
            Some(max) if steps % Self::CLOCK_EVERY == 0 && started.elapsed() >= max => {
                Some(Limit::Duration(max))
            }
            _ => None,
        }
    }
}

impl Default for Budget {
    /// Ten million steps: a few seconds of search, far more than any history of a few
    /// hundred operations per key needs unless it is pathological.
    fn default() -> Self {
        Self::steps(10_000_000)
    }
}

/// Which budget limit stopped a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Steps(u64),
    Duration(Duration),
}

/// The verdict on one object's history. Operation numbers are indices into the history that
/// was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<S> {
    /// The history is linearizable; `order` is one witness: the operations in the order they
    /// took effect. Indeterminate operations not in `order` never took effect.
    Linearizable { order: Vec<usize> },
    /// No linearization exists.
    Violation(Explanation<S>),
    /// The budget ran out before the search finished. This is not a pass.
    Unknown(Exhausted),
}

impl<S> Outcome<S> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable { .. })
    }

    /// Renames every operation index, as when one key's indices map back into the whole
    /// history.
    pub(crate) fn map_indices(self, f: impl Fn(usize) -> usize) -> Self {
        match self {
            Outcome::Linearizable { order } => Outcome::Linearizable {
                order: order.into_iter().map(&f).collect(),
            },
            Outcome::Violation(explanation) => Outcome::Violation(Explanation {
                linearized: explanation.linearized.into_iter().map(&f).collect(),
                state: explanation.state,
                blocked: explanation.blocked.map(&f),
                unplaced: explanation.unplaced.into_iter().map(&f).collect(),
            }),
            Outcome::Unknown(exhausted) => Outcome::Unknown(exhausted),
        }
    }
}

/// Why a history is not linearizable, taken from the deepest point the search reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation<S> {
    /// The longest linearizable prefix found: operations in the order they took effect.
    pub linearized: Vec<usize>,
    /// The model's state after `linearized`.
    pub state: S,
    /// The operation that had to take effect next, because it returned before any other
    /// unplaced operation, but could not. `None` only if the search never got that far,
    /// which a well-formed history cannot cause.
    pub blocked: Option<usize>,
    /// Every operation that could have taken effect next at that point (they were called
    /// before `blocked` returned), none of which the model accepts there or leads anywhere.
    pub unplaced: Vec<usize>,
}

impl<S: Debug> Explanation<S> {
    /// A human-readable account; `op` looks up an operation by the indices used here.
    pub fn render<'a, I, O>(&self, op: impl Fn(usize) -> Option<&'a Operation<I, O>>) -> String
    where
        I: Debug + 'a,
        O: Debug + 'a,
    {
        let line = |index: usize| match op(index) {
            Some(operation) => format!("    #{index} {operation}\n"),
            None => format!("    #{index} (not in the history given)\n"),
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "  longest linearizable prefix ({} operations):\n",
            self.linearized.len()
        );
        self.linearized.iter().for_each(|&i| out.push_str(&line(i)));
        let _ = writeln!(out, "  state after it: {:?}", self.state);
        if let Some(blocked) = self.blocked {
            let _ = write!(
                out,
                "  this operation returned before it could take effect:\n{}",
                line(blocked)
            );
        }
        let _ = writeln!(
            out,
            "  none of these could take effect next ({} operations):",
            self.unplaced.len()
        );
        self.unplaced.iter().for_each(|&i| out.push_str(&line(i)));
        out
    }
}

/// The budget limit that stopped a search, and how far it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub limit: Limit,
    /// The length of the longest linearizable prefix found before stopping.
    pub longest_prefix: usize,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Steps(steps) => write!(f, "gave up after {steps} steps")?,
            Limit::Duration(duration) => write!(f, "gave up after {duration:?}")?,
        }
        write!(
            f,
            " with a linearizable prefix of {} operations; raise the budget",
            self.longest_prefix
        )
    }
}

/// What the search cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub operations: usize,
    pub steps: u64,
    /// (linearized set, state) pairs in the cache at the end.
    pub cached_states: usize,
    pub elapsed: Duration,
}

/// An outcome and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked<S> {
    pub outcome: Outcome<S>,
    pub stats: Stats,
}

/// Checks one object's history against `model`.
///
/// Returns an error, rather than an outcome, if the history is malformed (see
/// [`HistoryError`]).
pub fn check_operations<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: &Budget,
) -> Result<Checked<M::State>> {
    for (index, operation) in history.iter().enumerate() {
        validate(model, index, operation)?;
    }
    let operations: Vec<&Operation<M::Input, M::Output>> = history.iter().collect();
    Ok(search(model, &operations, budget))
}

/// Rejects an operation the search cannot make sense of; `index` names it in the error.
pub(crate) fn validate<M: Model>(
    model: &M,
    index: usize,
    operation: &Operation<M::Input, M::Output>,
) -> Result<()> {
    if let Completion::Returned { at, output } = &operation.completion {
        if *at < operation.call {
            return Err(HistoryError::ReturnBeforeCall {
                index,
                call: operation.call.0,
                returned: at.0,
            });
        }
        if !model.output_fits(&operation.input, output) {
            return Err(HistoryError::OutputMismatch {
                index,
                input: format!("{:?}", operation.input),
                output: format!("{output:?}"),
            });
        }
    }
    Ok(())
}

/// One linearized operation on the search stack.
struct Frame<S> {
    /// Its call entry, to unlift on backtrack.
    node: usize,
    op: usize,
    /// The state before it took effect.
    previous: S,
    /// The alternatives still to try at the point it was placed; `None` if it was forced
    /// (see [`Search::fresh`]), which leaves no alternatives.
    rest: Option<Choices<S>>,
}

/// The operations that may take effect next at one point of the search, in the order to
/// try them.
struct Choices<S> {
    /// (call entry, operation, state after it) for each candidate the model accepts,
    /// earliest return first; a tried one is taken out.
    accepted: Vec<(usize, usize, Option<S>)>,
    next: usize,
    /// The first return entry still listed: the operation that must take effect before any
    /// operation called after it returned.
    deadline: Option<usize>,
}

/// What the search does next.
enum Next<S> {
    /// Arrived at a new (linearized set, state): force an operation or list the choices.
    Fresh,
    /// Try the next of these choices.
    Try(Choices<S>),
    /// Undo the most recent placement.
    Backtrack,
}

/// The search state for one object's history.
struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    entries: Entries,
    /// Operations that returned and are not yet linearized; the search succeeds at zero.
    remaining: usize,
    state: M::State,
    linearized: Bitset,
    /// Every (linearized set, state) reached so far. Since reaching an accepting one ends
    /// the search, each one here other than those on the stack has no future.
    cache: HashMap<Bitset, Vec<M::State>>,
    stack: Vec<Frame<M::State>>,
    /// The explanation from the deepest dead end, for a violation report.
    deepest: Option<Explanation<M::State>>,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [&'a Operation<M::Input, M::Output>]) -> Self {
        Self {
            model,
            ops,
            entries: Entries::new(ops.iter().map(|op| (op.call, op.return_time()))),
            remaining: ops.iter().filter(|op| !op.is_indeterminate()).count(),
            state: model.init(),
            linearized: Bitset::new(ops.len()),
            cache: HashMap::new(),
            stack: Vec::new(),
            deepest: None,
        }
    }

    /// The state after `op` takes effect now, if it can.
    fn effect(&self, op: usize) -> Option<M::State> {
        let operation = self.ops[op];
        match &operation.completion {
            Completion::Returned { output, .. } => {
                self.model.step(&self.state, &operation.input, output)
            }
            // An indeterminate operation that would not change the state is equivalent to
            // it never having happened, which the search already allows; skipping it keeps
            // such operations from multiplying paths.
            Completion::Indeterminate => self
                .model
                .step_indeterminate(&self.state, &operation.input)
                .filter(|next| *next != self.state),
        }
    }

    /// Places `op` (whose call entry is `node`), moving to `next`, unless that
    /// (linearized set, state) was reached before; says whether it placed it.
    fn place(
        &mut self,
        node: usize,
        op: usize,
        next: M::State,
        rest: Option<Choices<M::State>>,
    ) -> Result<(), Option<Choices<M::State>>> {
        self.linearized.insert(op);
        if !remember(&mut self.cache, &self.linearized, &next) {
            self.linearized.remove(op);
            return Err(rest);
        }
        let previous = std::mem::replace(&mut self.state, next);
        self.stack.push(Frame {
            node,
            op,
            previous,
            rest,
        });
        self.entries.lift(node);
        if !self.ops[op].is_indeterminate() {
            self.remaining -= 1;
        }
        Ok(())
    }

    /// At a new (linearized set, state), places without branching a candidate that returned
    /// and leaves the state unchanged (a read of the current value, a failed
    /// compare-and-set), if there is one; otherwise lists the candidates to branch on.
    ///
    /// Forcing is safe: such an operation, call it G, may take effect next (it was called
    /// before every unplaced operation returned), so any linearization from here that places
    /// G later can move G to the front without breaking real-time order or changing any
    /// state. Hence this point has a future exactly when the point after G has, and the
    /// other candidates need not be tried here. Without this, reads concurrent with many
    /// writes multiply the orders to search.
    fn fresh(&mut self) -> Next<M::State> {
        let mut accepted = Vec::new();
        let mut cursor = self.entries.first();
        let mut deadline = None;
        while let Some(node) = cursor {
            let Entry::Call { op, .. } = self.entries.entry(node) else {
                deadline = Some(node);
                break;
            };
            if let Some(next) = self.effect(op) {
                if next == self.state && !self.ops[op].is_indeterminate() {
                    return match self.place(node, op, next, None) {
                        Ok(()) => Next::Fresh,
                        // Reached before, so it has no future, nor has this point.
                        Err(_) => Next::Backtrack,
                    };
                }
                accepted.push((node, op, Some(next)));
            }
            cursor = self.entries.next(node);
        }
        // Earliest deadline first: an operation that must take effect soon is the likelier
        // to be next in a linearization, and trying it first finds one with less
        // backtracking. Ties keep history order, so the search stays deterministic.
        accepted.sort_by_key(|&(_, op, _)| (self.ops[op].return_time().is_none(), self.ops[op].return_time(), op));
        Next::Try(Choices {
            accepted,
            next: 0,
            deadline,
        })
    }

    /// Tries the remaining choices in order; when none is left, this point is a dead end.
    fn try_next(&mut self, mut choices: Choices<M::State>) -> Next<M::State> {
        while let Some((node, op, next)) = choices.accepted.get_mut(choices.next) {
            let (node, op, next) = (*node, *op, next.take());
            choices.next += 1;
            if let Some(next) = next {
                match self.place(node, op, next, Some(choices)) {
                    Ok(()) => return Next::Fresh,
                    Err(rest) => match rest {
                        Some(rest) => choices = rest,
                        None => return Next::Backtrack,
                    },
                }
            }
        }
        self.record_dead_end(choices.deadline);
        Next::Backtrack
    }

    /// Remembers this point as the explanation if it is the deepest dead end so far.
    fn record_dead_end(&mut self, deadline: Option<usize>) {
        let depth = self.stack.len();
        if self
            .deepest
            .as_ref()
            .is_some_and(|d| depth <= d.linearized.len())
        {
            return;
        }
        let blocked = deadline.and_then(|node| match self.entries.entry(node) {
            Entry::Return { op } => Some(op),
            _ => None,
        });
        self.deepest = Some(Explanation {
            linearized: self.stack.iter().map(|frame| frame.op).collect(),
            state: self.state.clone(),
            blocked,
            unplaced: calls_before(&self.entries, deadline),
        });
    }

    /// Undoes the most recent placement; `None` when nothing is left to undo.
    fn backtrack(&mut self) -> Option<Next<M::State>> {
        let frame = self.stack.pop()?;
        self.state = frame.previous;
        self.linearized.remove(frame.op);
        if !self.ops[frame.op].is_indeterminate() {
            self.remaining += 1;
        }
        self.entries.unlift(frame.node);
        Some(match frame.rest {
            Some(choices) => Next::Try(choices),
            // A forced placement had no alternatives (see `fresh`).
            None => Next::Backtrack,
        })
    }

    fn run(mut self, budget: &Budget) -> Checked<M::State> {
        let started = Instant::now();
        let mut steps: u64 = 0;
        let mut next = Next::Fresh;
        let outcome = loop {
            if self.remaining == 0 {
                break Outcome::Linearizable {
                    order: self.stack.iter().map(|frame| frame.op).collect(),
                };
            }
            if let Some(limit) = budget.exceeded(steps, started) {
                let found = self.deepest.as_ref().map_or(0, |d| d.linearized.len());
                break Outcome::Unknown(Exhausted {
                    limit,
                    longest_prefix: found.max(self.stack.len()),
                });
            }
            steps += 1;
            next = match next {
                Next::Fresh => self.fresh(),
                Next::Try(choices) => self.try_next(choices),
                Next::Backtrack => match self.backtrack() {
                    Some(next) => next,
                    None => {
                        let model = self.model;
                        break Outcome::Violation(self.deepest.take().unwrap_or_else(|| {
                            Explanation {
                                linearized: Vec::new(),
                                state: model.init(),
                                blocked: None,
                                unplaced: Vec::new(),
                            }
                        }));
                    }
                },
            };
        };
        Checked {
            outcome,
            stats: Stats {
                operations: self.ops.len(),
                steps,
                cached_states: self.cache.values().map(Vec::len).sum(),
                elapsed: started.elapsed(),
            },
        }
    }
}

/// Records `state` as reached with `linearized`; false if it had been reached before.
fn remember<S: Clone + Eq + std::hash::Hash>(
    cache: &mut HashMap<Bitset, Vec<S>>,
    linearized: &Bitset,
    state: &S,
) -> bool {
    match cache.get_mut(linearized) {
        Some(states) if states.contains(state) => false,
        Some(states) => {
            states.push(state.clone());
            true
        }
        None => {
            cache.insert(linearized.clone(), vec![state.clone()]);
            true
        }
    }
}

/// The search itself, over an already validated history.
pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    budget: &Budget,
) -> Checked<M::State> {
    let Some(canonical) = model.canonicalize(ops) else {
        return Search::new(model, ops).run(budget);
    };
    let canonical: Vec<&Operation<M::Input, M::Output>> = canonical.iter().collect();
    let mut checked = Search::new(model, &canonical).run(budget);
    // The state in an explanation should be the real one, not its canonical stand-in.
    if let Outcome::Violation(explanation) = &mut checked.outcome {
        if let Some(state) = replay(model, ops, &explanation.linearized) {
            explanation.state = state;
        }
    }
    checked
}

/// The state after `order` takes effect, or `None` if the model rejects it.
fn replay<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    order: &[usize],
) -> Option<M::State> {
    order.iter().try_fold(model.init(), |state, &op| {
        let operation = ops.get(op)?;
        match operation.output() {
            Some(output) => model.step(&state, &operation.input, output),
            None => model.step_indeterminate(&state, &operation.input),
        }
    })
}

/// The operations whose calls are still listed before `node` (or at all, if `None`).
fn calls_before(entries: &Entries, node: Option<usize>) -> Vec<usize> {
    let mut calls = Vec::new();
    let mut cursor = entries.first();
    while let Some(current) = cursor {
        if Some(current) == node {
            break;
        }
        if let Entry::Call { op, .. } = entries.entry(current) {
            calls.push(op);
        }
        cursor = entries.next(current);
    }
    calls
}
