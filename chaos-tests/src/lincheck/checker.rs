//! The search for a linearization of one object's history (Wing–Gong with Lowe's cache, as
//! in porcupine), with the refinements that make it fast on highly concurrent histories.
//!
//! The search walks the time-ordered list of call and return entries. Any call that comes
//! before the first return in the list belongs to an operation that may take effect next;
//! the search tries them, lifting an operation out of the list when the model accepts it.
//! Reaching a return entry means the operation it belongs to had to take effect by then and
//! no choice so far allows it, so the search backtracks. A cache of (set of linearized
//! operations, model state) pairs already explored prunes the exponential blow-up: two paths
//! that linearized the same operations into the same state have the same future.
//!
//! An indeterminate operation has no return entry, so it never forces a backtrack; the
//! search ends successfully once every operation that returned is linearized, and an
//! indeterminate one not placed by then is taken never to have happened.
//!
//! On top of porcupine's algorithm, each of them sound on its own (see where they are
//! defined), and each checked against a brute-force search in `tests/lincheck_reference.rs`:
//! - a pre-check on the order the history forces ([`find_impossible`]) reports most
//!   violations before any search;
//! - a read-only candidate that can take effect is placed without branching
//!   (`Search::fresh`);
//! - a path is abandoned as soon as a state some operation needs can no longer arise
//!   (`supply.rs`);
//! - the model may merge states nobody can tell apart ([`Model::canonicalize`],
//!   [`Model::stand_in`]), so the cache sees through them;
//! - candidates are tried earliest return first, which finds a linearization with little
//!   backtracking when there is one.

use std::collections::HashMap;
use std::fmt::{self, Debug, Write as _};
use std::time::{Duration, Instant};

use super::bitset::Bitset;
use super::entries::{Entries, Entry};
use super::error::{HistoryError, Result};
use super::history::{Completion, Operation};
use super::model::{Footprint, Model};
use super::precedence::{find_impossible, Excluded};
use super::supply::Supply;

/// How much work the search may do on one object before it gives up with
/// [`Outcome::Unknown`].
///
/// The step limit is deterministic: the same history and budget always give the same
/// outcome. The optional time limit is not, so a replayed failure should rely on steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The most search steps (a placement tried, a point's candidates listed, or a
    /// backtrack) per object.
    pub max_steps: u64,
    /// The most wall-clock time per object, if any.
    pub max_duration: Option<Duration>,
}

impl Budget {
    /// How many steps between two looks at the clock (a power of two); reading it every
    /// step would cost more than the step.
    const CLOCK_EVERY: u64 = 1024;

    pub fn steps(max_steps: u64) -> Self {
        Self { max_steps, max_duration: None }
    }

    fn exceeded(&self, steps: u64, started: Instant) -> Option<Limit> {
        if steps >= self.max_steps {
            return Some(Limit::Steps(self.max_steps));
        }
        match self.max_duration {
            Some(max) if steps & (Self::CLOCK_EVERY - 1) == 0 && started.elapsed() >= max => Some(Limit::Duration(max)),
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
            Outcome::Linearizable { order } => Outcome::Linearizable { order: order.into_iter().map(&f).collect() },
            Outcome::Violation(explanation) => Outcome::Violation(Explanation {
                linearized: explanation.linearized.into_iter().map(&f).collect(),
                state: explanation.state,
                blocked: explanation.blocked.map(&f),
                unplaced: explanation.unplaced.into_iter().map(&f).collect(),
                cause: match explanation.cause {
                    Cause::Overwritten { sources } => Cause::Overwritten {
                        sources: sources
                            .into_iter()
                            .map(|excluded| match excluded {
                                Excluded::Replaced { source, by } => {
                                    Excluded::Replaced { source: source.map(&f), by: f(by) }
                                }
                                Excluded::Later { source } => Excluded::Later { source: f(source) },
                            })
                            .collect(),
                    },
                    other => other,
                },
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
    /// An operation that cannot take effect after `linearized`: either it returned before
    /// any operation the model accepts there led anywhere, or the state it needs can no
    /// longer arise (its value was overwritten for good, say). `None` only if the search
    /// never got that far, which a well-formed history cannot cause.
    pub blocked: Option<usize>,
    /// Every operation that could have taken effect next at that point (called before the
    /// first unplaced operation returned), none of which leads anywhere.
    pub unplaced: Vec<usize>,
    pub cause: Cause,
}

/// Why `blocked` cannot take effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It returned before any operation that could go after `linearized` led anywhere.
    Deadline,
    /// The state it needs can no longer arise after `linearized` (for a register: the
    /// value it read was overwritten and is never written again).
    Unreachable,
    /// Found before searching, so `linearized` is empty: every way the state it needs could
    /// have arisen is excluded by the order the history forces (see [`Excluded`]). No
    /// sources means nothing ever produces that state.
    Overwritten { sources: Vec<Excluded> },
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
        if let Cause::Overwritten { sources } = &self.cause {
            if let Some(blocked) = self.blocked {
                let _ = write!(
                    out,
                    "  this operation needs a state that is certainly gone when it takes effect:\n{}",
                    line(blocked)
                );
            }
            if sources.is_empty() {
                out.push_str("  no operation produces that state\n");
            }
            for excluded in sources {
                match *excluded {
                    Excluded::Replaced { source: Some(source), by } => {
                        let _ = write!(
                            out,
                            "  produced by\n{}  but this must take effect after that and before it, \
                             and sees or leaves another state:\n{}",
                            line(source),
                            line(by)
                        );
                    }
                    Excluded::Replaced { source: None, by } => {
                        let _ = write!(
                            out,
                            "  the initial state, but this must take effect before it, \
                             and sees or leaves another state:\n{}",
                            line(by)
                        );
                    }
                    Excluded::Later { source } => {
                        let _ = write!(
                            out,
                            "  could be produced by\n{}  but that must take effect after it\n",
                            line(source)
                        );
                    }
                }
            }
            return out;
        }
        let _ = writeln!(out, "  longest linearizable prefix ({} operations):", self.linearized.len());
        self.linearized.iter().for_each(|&i| out.push_str(&line(i)));
        let _ = writeln!(out, "  state after it: {:?}", self.state);
        if let Some(blocked) = self.blocked {
            let why = match self.cause {
                Cause::Unreachable => "the state it needs can no longer arise",
                _ => "it returned before anything placed next led anywhere",
            };
            let _ = write!(out, "  this operation cannot take effect after that prefix ({why}):\n{}", line(blocked));
        }
        let _ = writeln!(out, "  none of these could take effect next ({} operations):", self.unplaced.len());
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
        write!(f, " with a linearizable prefix of {} operations; raise the budget", self.longest_prefix)
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
pub(crate) fn validate<M: Model>(model: &M, index: usize, operation: &Operation<M::Input, M::Output>) -> Result<()> {
    if let Completion::Returned { at, output } = &operation.completion {
        if *at < operation.call {
            return Err(HistoryError::ReturnBeforeCall { index, call: operation.call.0, returned: at.0 });
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
    /// Detects paths on which some operation can no longer take effect.
    supply: Supply<M::State>,
    /// Per operation: whether it leaves the state unchanged wherever it can take effect.
    read_only: Vec<bool>,
    /// Every (linearized set, state) reached so far. Since reaching an accepting one ends
    /// the search, each one here other than those on the stack has no future.
    cache: HashMap<Bitset, Vec<M::State>>,
    stack: Vec<Frame<M::State>>,
    /// The explanation from the deepest dead end, for a violation report.
    deepest: Option<Explanation<M::State>>,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [&'a Operation<M::Input, M::Output>], footprints: &[Footprint<M::State>]) -> Self {
        Self {
            model,
            ops,
            entries: Entries::new(ops.iter().map(|op| (op.call, op.return_time()))),
            remaining: ops.iter().filter(|op| !op.is_indeterminate()).count(),
            state: model.init(),
            linearized: Bitset::new(ops.len()),
            supply: Supply::new(ops, footprints),
            read_only: footprints.iter().map(Footprint::is_read_only).collect(),
            cache: HashMap::new(),
            stack: Vec::new(),
            deepest: None,
        }
    }

    /// The state after `op` takes effect now, if it can.
    fn effect(&self, op: usize) -> Option<M::State> {
        let operation = self.ops[op];
        match &operation.completion {
            Completion::Returned { output, .. } => self.model.step(&self.state, &operation.input, output),
            // An indeterminate operation that would not change the state is equivalent to
            // it never having happened, which the search already allows; skipping it keeps
            // such operations from multiplying paths.
            Completion::Indeterminate => {
                self.model.step_indeterminate(&self.state, &operation.input).filter(|next| *next != self.state)
            }
        }
    }

    /// Places `op` (whose call entry is `node`), moving to `next`, unless that
    /// (linearized set, state) was reached before, in which case it hands `rest` back.
    fn place(
        &mut self,
        node: usize,
        op: usize,
        next: M::State,
        rest: Option<Choices<M::State>>,
    ) -> Result<(), Option<Choices<M::State>>> {
        self.linearized.insert(op);
        self.supply.take(op);
        let stand_in = self.stand_in(&next);
        if !remember(&mut self.cache, &self.linearized, stand_in.as_ref().unwrap_or(&next)) {
            self.supply.put_back(op);
            self.linearized.remove(op);
            return Err(rest);
        }
        let previous = std::mem::replace(&mut self.state, next);
        self.stack.push(Frame { node, op, previous, rest });
        self.entries.lift(node);
        if !self.ops[op].is_indeterminate() {
            self.remaining -= 1;
        }
        Ok(())
    }

    /// What the cache records for `state`: its stand-in if no operation left observes it
    /// (see [`Model::stand_in`]), so that paths differing only in such states meet.
    fn stand_in(&self, state: &M::State) -> Option<M::State> {
        if !self.supply.unobserved(state) {
            return None;
        }
        // A stand-in that some operation observes would not stand for anything.
        self.model.stand_in(state).filter(|stand_in| !self.supply.ever_observed(stand_in))
    }

    /// Just placed an operation (or just started): go on from here unless some operation
    /// can no longer take effect.
    fn arrive(&mut self) -> Next<M::State> {
        if !self.supply.dead(&self.state) {
            return Next::Fresh;
        }
        if self.deeper() {
            let mut unplaced: Vec<usize> = (0..self.ops.len())
                .filter(|&op| !self.linearized.contains(op) && !self.ops[op].is_indeterminate())
                .collect();
            unplaced.sort_by_key(|&op| (self.ops[op].return_time(), op));
            let blocked = self.supply.starved(&self.state, unplaced.into_iter());
            let deadline = first_return(&self.entries);
            self.record(blocked, deadline, Cause::Unreachable);
        }
        Next::Backtrack
    }

    /// At a new (linearized set, state), places without branching a read-only candidate
    /// that returned and can take effect now (a read of the current value, a failed
    /// compare-and-set), if there is one; otherwise lists the candidates to branch on.
    ///
    /// Forcing is safe: such an operation, call it G, may take effect next (it was called
    /// before every unplaced operation returned), and wherever a linearization from here
    /// places G, G leaves the state as it found it; so G can move to the front without
    /// breaking real-time order or changing any state along the way. Hence this point has a
    /// future exactly when the point after G has, and the other candidates need not be tried
    /// here. Without this, reads concurrent with many writes multiply the orders to search.
    /// (An operation that merely happens to leave *this* state unchanged, like a write of
    /// the current value, does not qualify: moved, it would no longer overwrite whatever
    /// came between.)
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
                if self.read_only[op] && next == self.state && !self.ops[op].is_indeterminate() {
                    return match self.place(node, op, next, None) {
                        Ok(()) => self.arrive(),
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
        Next::Try(Choices { accepted, next: 0, deadline })
    }

    /// Tries the remaining choices in order; when none is left, this point is a dead end.
    fn try_next(&mut self, mut choices: Choices<M::State>) -> Next<M::State> {
        while let Some((node, op, next)) = choices.accepted.get_mut(choices.next) {
            let (node, op, next) = (*node, *op, next.take());
            choices.next += 1;
            if let Some(next) = next {
                match self.place(node, op, next, Some(choices)) {
                    Ok(()) => return self.arrive(),
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
        if !self.deeper() {
            return;
        }
        let blocked = deadline.and_then(|node| match self.entries.entry(node) {
            Entry::Return { op } => Some(op),
            _ => None,
        });
        self.record(blocked, deadline, Cause::Deadline);
    }

    /// Whether this point is deeper than the deepest dead end recorded.
    fn deeper(&self) -> bool {
        self.deepest.as_ref().is_none_or(|d| self.stack.len() > d.linearized.len())
    }

    fn record(&mut self, blocked: Option<usize>, deadline: Option<usize>, cause: Cause) {
        self.deepest = Some(Explanation {
            linearized: self.stack.iter().map(|frame| frame.op).collect(),
            state: self.state.clone(),
            blocked,
            unplaced: calls_before(&self.entries, deadline),
            cause,
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
        self.supply.put_back(frame.op);
        Some(match frame.rest {
            Some(choices) => Next::Try(choices),
            // A forced placement had no alternatives (see `fresh`).
            None => Next::Backtrack,
        })
    }

    /// Searches until an outcome, with `started` the time the check of this object began.
    fn run(mut self, budget: &Budget, started: Instant) -> Checked<M::State> {
        let mut steps: u64 = 0;
        let mut next = self.arrive();
        let outcome = loop {
            if self.remaining == 0 {
                break Outcome::Linearizable { order: self.stack.iter().map(|frame| frame.op).collect() };
            }
            if let Some(limit) = budget.exceeded(steps, started) {
                let found = self.deepest.as_ref().map_or(0, |d| d.linearized.len());
                break Outcome::Unknown(Exhausted { limit, longest_prefix: found.max(self.stack.len()) });
            }
            steps += 1;
            next = match next {
                Next::Fresh => self.fresh(),
                Next::Try(choices) => self.try_next(choices),
                Next::Backtrack => match self.backtrack() {
                    Some(next) => next,
                    None => {
                        let model = self.model;
                        break Outcome::Violation(self.deepest.take().unwrap_or_else(|| Explanation {
                            linearized: Vec::new(),
                            state: model.init(),
                            blocked: None,
                            unplaced: Vec::new(),
                            cause: Cause::Deadline,
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
        return search_as_is(model, ops, budget);
    };
    let canonical: Vec<&Operation<M::Input, M::Output>> = canonical.iter().collect();
    let mut checked = search_as_is(model, &canonical, budget);
    // The state in an explanation should be the real one, not its canonical stand-in.
    if let Outcome::Violation(explanation) = &mut checked.outcome {
        if let Some(state) = replay(model, ops, &explanation.linearized) {
            explanation.state = state;
        }
    }
    checked
}

/// The pre-check, then the search, on `ops` as given.
fn search_as_is<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], budget: &Budget) -> Checked<M::State> {
    let started = Instant::now();
    let footprints: Vec<Footprint<M::State>> = ops.iter().map(|op| model.footprint(&op.input, op.output())).collect();
    let initial = model.init();
    if let Some(found) = find_impossible(ops, &footprints, &initial) {
        return Checked {
            outcome: Outcome::Violation(Explanation {
                linearized: Vec::new(),
                state: initial,
                blocked: Some(found.op),
                unplaced: Vec::new(),
                cause: Cause::Overwritten { sources: found.sources },
            }),
            stats: Stats { operations: ops.len(), steps: 0, cached_states: 0, elapsed: started.elapsed() },
        };
    }
    Search::new(model, ops, &footprints).run(budget, started)
}

/// The state after `order` takes effect, or `None` if the model rejects it.
fn replay<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], order: &[usize]) -> Option<M::State> {
    order.iter().try_fold(model.init(), |state, &op| {
        let operation = ops.get(op)?;
        match operation.output() {
            Some(output) => model.step(&state, &operation.input, output),
            None => model.step_indeterminate(&state, &operation.input),
        }
    })
}

/// The first return entry still listed.
fn first_return(entries: &Entries) -> Option<usize> {
    let mut cursor = entries.first();
    while let Some(node) = cursor {
        if let Entry::Return { .. } = entries.entry(node) {
            return Some(node);
        }
        cursor = entries.next(node);
    }
    None
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
