//! Independent verification of a witness order, so tests need not trust the search.

use super::history::Operation;
use super::model::Model;

/// Checks that `order` (indices into `history`) is a linearization of `history`: each
/// operation appears at most once, every operation that returned appears, no operation is
/// placed before one that returned before it was called, and `model` accepts every step.
/// Returns what is wrong otherwise.
pub fn verify_witness<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    order: &[usize],
) -> Result<(), String> {
    let mut placed = vec![false; history.len()];
    let mut state = model.init();
    for (position, &index) in order.iter().enumerate() {
        let operation = history.get(index).ok_or_else(|| format!("#{index} is not in the history"))?;
        if std::mem::replace(&mut placed[index], true) {
            return Err(format!("#{index} is placed twice"));
        }
        // Real time: nothing placed later may have returned before this one was called.
        for &later in &order[position + 1..] {
            let returned = history.get(later).and_then(Operation::return_time);
            if returned.is_some_and(|returned| returned < operation.call) {
                return Err(format!("#{index} is placed before #{later}, which returned before #{index} was called"));
            }
        }
        let next = match operation.output() {
            Some(output) => model.step(&state, &operation.input, output),
            None => model.step_indeterminate(&state, &operation.input),
        };
        state = next.ok_or_else(|| format!("#{index} {operation} cannot take effect in state {state:?}"))?;
    }
    match history.iter().enumerate().find(|(index, operation)| !operation.is_indeterminate() && !placed[*index]) {
        Some((index, operation)) => Err(format!("#{index} {operation} returned but is not placed")),
        None => Ok(()),
    }
}
