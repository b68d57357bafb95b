//! The history as a time-ordered, doubly linked list of call and return entries.
//!
//! This is the list of Lowe's and porcupine's variant of the Wing–Gong search. Linearizing an
//! operation "lifts" its call and return entries out of the list; backtracking "unlifts" them.
//! Unlifting in the reverse order of lifting restores the list exactly (the "dancing links"
//! property), because a removed node keeps its own `prev` and `next`.

use super::history::Time;

/// The index of the sentinel that starts the list.
const HEAD: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Head,
    /// The call of operation `op`; `ret` is its return entry, absent when indeterminate.
    Call {
        op: usize,
        ret: Option<usize>,
    },
    Return {
        op: usize,
    },
}

#[derive(Clone, Debug)]
struct Node {
    entry: Entry,
    prev: usize,
    next: Option<usize>,
}

/// The list. Nodes are addressed by their index; index 0 is the head sentinel.
#[derive(Debug)]
pub(crate) struct Entries {
    nodes: Vec<Node>,
}

impl Entries {
    /// Builds the list from each operation's call time and return time (`None` for an
    /// indeterminate operation, whose return is at +infinity and therefore never listed).
    ///
    /// Entries are ordered by time; at equal times calls come before returns, so operations
    /// that touch at one instant count as concurrent. Remaining ties break by operation
    /// index, which keeps the search deterministic.
    pub(crate) fn new(times: impl Iterator<Item = (Time, Option<Time>)>) -> Self {
        // (time, 0 for a call and 1 for a return, operation index)
        let mut events: Vec<(Time, u8, usize)> = Vec::new();
        let mut operations = 0;
        for (op, (call, ret)) in times.enumerate() {
            operations = op + 1;
            events.push((call, 0, op));
            if let Some(ret) = ret {
                events.push((ret, 1, op));
            }
        }
        events.sort_unstable();

        let mut nodes = Vec::with_capacity(events.len() + 1);
        nodes.push(Node { entry: Entry::Head, prev: HEAD, next: None });
        let mut call_node = vec![HEAD; operations];
        for (position, &(_, kind, op)) in events.iter().enumerate() {
            let index = position + 1;
            let entry = if kind == 0 {
                call_node[op] = index;
                Entry::Call { op, ret: None }
            } else {
                // Link the call to its return; the call sorts first since call <= return
                // was validated and calls win ties (were it not, `HEAD` is left alone).
                let call = call_node[op];
                if let Entry::Call { ret, .. } = &mut nodes[call].entry {
                    *ret = Some(index);
                }
                Entry::Return { op }
            };
            nodes[index - 1].next = Some(index);
            nodes.push(Node { entry, prev: index - 1, next: None });
        }
        Self { nodes }
    }

    /// The first entry still in the list.
    pub(crate) fn first(&self) -> Option<usize> {
        self.nodes[HEAD].next
    }

    pub(crate) fn next(&self, node: usize) -> Option<usize> {
        self.nodes[node].next
    }

    pub(crate) fn entry(&self, node: usize) -> Entry {
        self.nodes[node].entry
    }

    /// Removes a call entry and its return entry.
    pub(crate) fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Entry::Call { ret: Some(ret), .. } = self.nodes[call].entry {
            self.unlink(ret);
        }
    }

    /// Undoes the most recent `lift` still in effect, which must have been of `call`.
    pub(crate) fn unlift(&mut self, call: usize) {
        if let Entry::Call { ret: Some(ret), .. } = self.nodes[call].entry {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn unlink(&mut self, node: usize) {
        let Node { prev, next, .. } = self.nodes[node];
        self.nodes[prev].next = next;
        if let Some(next) = next {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let Node { prev, next, .. } = self.nodes[node];
        self.nodes[prev].next = Some(node);
        if let Some(next) = next {
            self.nodes[next].prev = node;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(entries: &Entries) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut cursor = entries.first();
        while let Some(node) = cursor {
            out.push(entries.entry(node));
            cursor = entries.next(node);
        }
        out
    }

    #[test]
    fn orders_by_time_with_calls_first_and_restores_after_unlift() {
        // op 0: [0, 10]; op 1: [10, 20]; op 2: [5, +inf)
        let times = [(Time(0), Some(Time(10))), (Time(10), Some(Time(20))), (Time(5), None)];
        let mut entries = Entries::new(times.into_iter());
        let before = listed(&entries);
        let kinds: Vec<String> = before
            .iter()
            .map(|e| match e {
                Entry::Call { op, .. } => format!("c{op}"),
                Entry::Return { op } => format!("r{op}"),
                Entry::Head => "h".into(),
            })
            .collect();
        assert_eq!(kinds, ["c0", "c2", "c1", "r0", "r1"]);

        let call = |entries: &Entries, want: usize| {
            let mut cursor = entries.first();
            while let Some(node) = cursor {
                if matches!(entries.entry(node), Entry::Call { op, .. } if op == want) {
                    return node;
                }
                cursor = entries.next(node);
            }
            unreachable!("call of op {want} is listed")
        };
        let c0 = call(&entries, 0);
        entries.lift(c0);
        let c2 = call(&entries, 2);
        entries.lift(c2);
        assert_eq!(listed(&entries).len(), 2);
        entries.unlift(c2);
        entries.unlift(c0);
        assert_eq!(listed(&entries), before);
    }
}
