//! The sequential specification an operation history is checked against.

use std::fmt::Debug;
use std::hash::Hash;

use super::history::Operation;

/// A sequential object: a state and the transitions that operations cause.
///
/// The checker searches for an order of the operations, consistent with real time, in which
/// every step is accepted. A model must be deterministic in the state it moves to; a
/// nondeterministic object can still be modelled by making `State` the set of states it
/// could be in (porcupine's power-set construction).
pub trait Model {
    /// The object's state. The checker caches states it has seen, so this should be cheap
    /// to clone and hash.
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after an operation with `input` is applied to `state` and returns
    /// `output`, or `None` if the object cannot return `output` from `state`.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// The state after an operation whose output is unknown takes effect on `state`, or
    /// `None` if it cannot take effect from `state`. The checker separately considers that
    /// the operation never took effect at all.
    fn step_indeterminate(&self, state: &Self::State, input: &Self::Input) -> Option<Self::State>;

    /// Whether `output` is the kind of answer `input` gets at all (a get answered with a
    /// put's acknowledgement is not). A history with a misfit is rejected as malformed
    /// rather than reported as a violation, because it is a bug in the recorder.
    fn output_fits(&self, _input: &Self::Input, _output: &Self::Output) -> bool {
        true
    }

    /// What an operation needs from the state and what it can leave, so the search can
    /// abandon a path as soon as some operation can no longer take effect. `output` is
    /// `None` for an indeterminate operation. The default claims nothing, which disables
    /// the pruning but is always correct.
    fn footprint(&self, _input: &Self::Input, _output: Option<&Self::Output>) -> Footprint<Self::State> {
        Footprint { requires: None, produces: Produces::Unknown, observes: Vec::new() }
    }

    /// A stand-in for `state` once no operation left to place observes it (see
    /// [`Footprint::observes`]), or `None` to keep it as it is. States with the same stand-in
    /// must behave alike toward every operation that observes none of them, so the search's
    /// cache may treat them as one: in a register, once nobody will read a value any more,
    /// which unread value is current no longer matters. The default merges nothing.
    fn stand_in(&self, _state: &Self::State) -> Option<Self::State> {
        None
    }

    /// Optionally rewrites one object's operations into an equivalent history that is
    /// cheaper to search, or returns `None` to search them as they are.
    ///
    /// "Equivalent" is strict: an order of the operations must be a linearization of the
    /// rewritten history exactly when it is one of the original. The register model uses
    /// this to merge values nobody ever reads into one, so the cache sees through them.
    fn canonicalize(
        &self,
        _operations: &[&Operation<Self::Input, Self::Output>],
    ) -> Option<Vec<Operation<Self::Input, Self::Output>>> {
        None
    }
}

/// What an operation needs from the state and what it can change it to; see
/// [`Model::footprint`].
///
/// The search uses footprints to detect that a state some operation requires can no longer
/// arise: the state is not that now and no operation left can produce it. Footprints must be
/// truthful: claiming less (no requirement, [`Produces::Unknown`]) only costs speed, while
/// claiming more can make the checker report violations that are not there. In a register whose
/// writes have unique values, this notices at once that a value still to be read has been
/// overwritten for good, instead of exploring every order of the writes until the read's
/// return time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint<S> {
    /// The operation can take effect only in this state: `step` accepts it from no other.
    pub requires: Option<S>,
    /// The states the operation can move the object into from a different state.
    pub produces: Produces<S>,
    /// Every state this operation can tell apart from others (a read of `x` observes `x`; a
    /// compare-and-set expecting `e` observes `e`), including `requires`. Used with
    /// [`Model::stand_in`]; if that is not implemented this may stay empty.
    pub observes: Vec<S>,
}

impl<S: Eq> Footprint<S> {
    /// Whether the operation leaves the state unchanged wherever it can take effect: it
    /// produces nothing, or it only takes effect in the one state it produces.
    pub fn is_read_only(&self) -> bool {
        match (&self.requires, &self.produces) {
            (_, Produces::Nothing) => true,
            (Some(required), Produces::Maybe(produced) | Produces::Always(produced)) => required == produced,
            _ => false,
        }
    }
}

/// The states an operation can move the object into; see [`Footprint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Produces<S> {
    /// It never changes the state.
    Nothing,
    /// It either leaves the state alone or changes it to exactly this state.
    Maybe(S),
    /// Whenever it takes effect, the state after it is exactly this, whatever it was before
    /// (a blind write). An operation that returned with this footprint certainly replaced
    /// any other state, which lets the checker rule out reads of overwritten values before
    /// searching.
    Always(S),
    /// It may change the state to anything (or the model does not say).
    Unknown,
}
