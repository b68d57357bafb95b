//! Bookkeeping that lets the search abandon a path as soon as an operation still to place
//! can never take effect (see [`Footprint`]).

use std::collections::HashMap;

use super::history::Operation;
use super::model::{Footprint, Produces};

/// What one operation produces, with states numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Produced {
    Nothing,
    State(usize),
    Unknown,
}

/// For each state some returned operation requires: how many unplaced operations require
/// it and how many can still produce it.
///
/// A required state is *orphaned* when nothing left can produce it. A path is dead when an
/// orphaned state is not the current one (or two are orphaned, since the state is only
/// ever one of them): the operations requiring it can never take effect.
pub(crate) struct Supply<S> {
    /// The states named by footprints, by number.
    states: Vec<S>,
    /// Per operation: the state it requires (only for operations that returned, since an
    /// indeterminate one need never take effect) and what it produces.
    requires: Vec<Option<usize>>,
    produces: Vec<Produced>,
    /// Per state: unplaced operations requiring it, and unplaced ones producing it.
    requirers: Vec<u32>,
    producers: Vec<u32>,
    /// Unplaced operations that may produce anything; while there are any, nothing is
    /// orphaned.
    unknown_producers: usize,
    /// How many states are orphaned, and the sum of their numbers (which is the number of
    /// the orphan when there is exactly one).
    orphans: usize,
    orphan_sum: usize,
    /// State numbers, and per operation the states it observes, and per state how many
    /// unplaced operations (indeterminate ones included) observe it.
    numbers: HashMap<S, usize>,
    observes: Vec<Vec<usize>>,
    observers: Vec<u32>,
    /// Per state: whether any operation at all observes it.
    ever_observed: Vec<bool>,
}

impl<S: Clone + Eq + std::hash::Hash> Supply<S> {
    /// `footprints[i]` is the footprint of `ops[i]`.
    pub(crate) fn new<I, O>(ops: &[&Operation<I, O>], footprints: &[Footprint<S>]) -> Self {
        let mut numbers: HashMap<S, usize> = HashMap::new();
        let mut states = Vec::new();
        let mut number = |state: S| {
            *numbers.entry(state.clone()).or_insert_with(|| {
                states.push(state);
                states.len() - 1
            })
        };
        let mut requires = Vec::with_capacity(ops.len());
        let mut produces = Vec::with_capacity(ops.len());
        let mut observes = Vec::with_capacity(ops.len());
        for (op, footprint) in ops.iter().zip(footprints) {
            observes.push(footprint.observes.iter().cloned().map(&mut number).collect());
            requires.push(footprint.requires.clone().filter(|_| !op.is_indeterminate()).map(&mut number));
            produces.push(match &footprint.produces {
                Produces::Nothing => Produced::Nothing,
                Produces::Maybe(state) | Produces::Always(state) => Produced::State(number(state.clone())),
                Produces::Unknown => Produced::Unknown,
            });
        }
        let mut supply = Self {
            requirers: vec![0; states.len()],
            producers: vec![0; states.len()],
            observers: vec![0; states.len()],
            ever_observed: vec![false; states.len()],
            states,
            numbers,
            observes,
            requires,
            produces,
            unknown_producers: 0,
            orphans: 0,
            orphan_sum: 0,
        };
        for op in 0..ops.len() {
            supply.put_back(op);
        }
        for (number, observers) in supply.observers.iter().enumerate() {
            supply.ever_observed[number] = *observers > 0;
        }
        supply
    }

    fn orphaned(&self, state: usize) -> bool {
        self.requirers[state] > 0 && self.producers[state] == 0
    }

    /// Applies `change` to the counts of `state`, keeping the orphan tally right.
    fn adjust(&mut self, state: usize, change: impl FnOnce(&mut Self)) {
        let was = self.orphaned(state);
        change(self);
        match (was, self.orphaned(state)) {
            (false, true) => {
                self.orphans += 1;
                self.orphan_sum += state;
            }
            (true, false) => {
                self.orphans -= 1;
                self.orphan_sum -= state;
            }
            _ => {}
        }
    }

    /// Operation `op` was placed.
    pub(crate) fn take(&mut self, op: usize) {
        for &state in &self.observes[op] {
            self.observers[state] -= 1;
        }
        if let Some(state) = self.requires[op] {
            self.adjust(state, |s| s.requirers[state] -= 1);
        }
        match self.produces[op] {
            Produced::State(state) => self.adjust(state, |s| s.producers[state] -= 1),
            Produced::Unknown => self.unknown_producers -= 1,
            Produced::Nothing => {}
        }
    }

    /// Operation `op` was unplaced (or not yet placed, at the start).
    pub(crate) fn put_back(&mut self, op: usize) {
        for &state in &self.observes[op] {
            self.observers[state] += 1;
        }
        if let Some(state) = self.requires[op] {
            self.adjust(state, |s| s.requirers[state] += 1);
        }
        match self.produces[op] {
            Produced::State(state) => self.adjust(state, |s| s.producers[state] += 1),
            Produced::Unknown => self.unknown_producers += 1,
            Produced::Nothing => {}
        }
    }

    /// Whether no unplaced operation observes `state`.
    pub(crate) fn unobserved(&self, state: &S) -> bool {
        self.numbers.get(state).is_none_or(|&number| self.observers[number] == 0)
    }

    /// Whether any operation, placed or not, observes `state`.
    pub(crate) fn ever_observed(&self, state: &S) -> bool {
        self.numbers.get(state).is_some_and(|&number| self.ever_observed[number])
    }

    /// Whether some unplaced operation that returned can no longer take effect, given the
    /// current state.
    pub(crate) fn dead(&self, current: &S) -> bool {
        if self.unknown_producers > 0 {
            return false;
        }
        match self.orphans {
            0 => false,
            1 => self.states[self.orphan_sum] != *current,
            _ => true,
        }
    }

    /// Among `unplaced` operations, one that can no longer take effect (for an explanation),
    /// preferring the earliest in `unplaced`.
    pub(crate) fn starved(&self, current: &S, mut unplaced: impl Iterator<Item = usize>) -> Option<usize> {
        unplaced
            .find(|&op| self.requires[op].is_some_and(|state| self.orphaned(state) && self.states[state] != *current))
    }
}
