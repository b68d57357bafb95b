//! [`TaskGraph`]: a pipeline's tasks as a petgraph DAG, which the agent walks
//! to run every ready task at once (DESIGN §9.2), and cycle finding for
//! validation.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::{Pipeline, Task};

/// The dependency graph of one pipeline's tasks; an edge runs from a task to
/// each task that depends on it.
#[derive(Clone, Debug)]
pub struct TaskGraph {
    graph: DiGraph<String, ()>,
    /// Task names to nodes, in name order.
    nodes: BTreeMap<String, NodeIndex>,
}

/// Why a pipeline's tasks do not form a DAG. [`crate::validate`] reports
/// these too, with paths; a validated pipeline never produces one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// A task depends on a task the pipeline does not have.
    #[error("task {task:?} depends on unknown task {dependency:?}")]
    UnknownDependency {
        /// The depending task.
        task: String,
        /// The missing task.
        dependency: String,
    },
    /// Tasks depend on each other in a circle.
    #[error("dependency cycle: {}", cycle_text(.members))]
    Cycle {
        /// The tasks of the cycle, each depending on the next and the last
        /// on the first.
        members: Vec<String>,
    },
}

/// `a -> b -> c -> a` for the cycle `[a, b, c]`.
pub(crate) fn cycle_text(members: &[String]) -> String {
    let mut text = members.join(" -> ");
    if let Some(first) = members.first() {
        text.push_str(" -> ");
        text.push_str(first);
    }
    text
}

impl TaskGraph {
    /// The graph of a pipeline's tasks.
    pub fn from_pipeline(pipeline: &Pipeline) -> Result<Self, DagError> {
        Self::new(&pipeline.tasks)
    }

    /// The graph of `tasks`, keyed by name; fails on an unknown dependency or
    /// a cycle (the first, by task name).
    pub fn new(tasks: &BTreeMap<String, Task>) -> Result<Self, DagError> {
        let mut graph = DiGraph::with_capacity(tasks.len(), tasks.len());
        let mut nodes = BTreeMap::new();
        for name in tasks.keys() {
            nodes.insert(name.clone(), graph.add_node(name.clone()));
        }
        for (name, task) in tasks {
            let to = nodes[name];
            // A set, so that a dependency listed twice makes one edge.
            let mut from = BTreeSet::new();
            for dependency in &task.dependencies {
                let Some(&node) = nodes.get(dependency) else {
                    return Err(DagError::UnknownDependency { task: name.clone(), dependency: dependency.clone() });
                };
                from.insert(node);
            }
            for node in from {
                graph.add_edge(node, to, ());
            }
        }
        let this = Self { graph, nodes };
        if let Some(members) = this.cycles().into_iter().next() {
            return Err(DagError::Cycle { members });
        }
        Ok(this)
    }

    /// How many tasks there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every task after all its dependencies; among tasks free to go at the
    /// same point, in name order, so the order is the same every time.
    pub fn topological_order(&self) -> Vec<&str> {
        let mut waiting: Vec<usize> =
            self.graph.node_indices().map(|node| self.dependencies_of(node).count()).collect();
        let mut ready: BTreeSet<&str> = self
            .graph
            .node_indices()
            .filter(|node| waiting[node.index()] == 0)
            .map(|node| self.graph[node].as_str())
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(name) = ready.pop_first() {
            order.push(name);
            let node = self.nodes[name];
            for next in self.graph.neighbors_directed(node, Direction::Outgoing) {
                waiting[next.index()] -= 1;
                if waiting[next.index()] == 0 {
                    ready.insert(self.graph[next].as_str());
                }
            }
        }
        order
    }

    /// A walk through the tasks as they end, starting with the tasks that
    /// depend on nothing: what the agent follows to start each task once its
    /// dependencies have ended.
    pub fn walk(&self) -> Walk<'_> {
        let waiting: Vec<usize> = self.graph.node_indices().map(|node| self.dependencies_of(node).count()).collect();
        let ready = self
            .graph
            .node_indices()
            .filter(|node| waiting[node.index()] == 0)
            .map(|node| self.graph[node].as_str())
            .collect();
        Walk { graph: self, ended: vec![false; waiting.len()], waiting, ready }
    }

    /// The tasks not in `finished` whose dependencies are all in `finished`,
    /// in name order. The caller leaves out the tasks it has already started.
    /// This looks at every task; [`TaskGraph::walk`] answers the same as
    /// tasks end, in time of the edges of the task that ended.
    pub fn ready_tasks<Q>(&self, finished: &BTreeSet<Q>) -> Vec<&str>
    where
        Q: Borrow<str> + Ord,
    {
        self.nodes
            .iter()
            .filter(|(name, _)| !finished.contains(name.as_str()))
            .filter(|(_, &node)| {
                self.dependencies_of(node).all(|dependency| finished.contains(self.graph[dependency].as_str()))
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The direct dependencies of `task`, in name order; empty for an
    /// unknown task.
    pub fn dependencies(&self, task: &str) -> Vec<&str> {
        let Some(&node) = self.nodes.get(task) else {
            return Vec::new();
        };
        let mut names: Vec<&str> =
            self.dependencies_of(node).map(|dependency| self.graph[dependency].as_str()).collect();
        names.sort_unstable();
        names
    }

    /// The tasks that depend on `task` directly, in name order; empty for an
    /// unknown task.
    pub fn dependents(&self, task: &str) -> Vec<&str> {
        let Some(&node) = self.nodes.get(task) else {
            return Vec::new();
        };
        let mut names: Vec<&str> =
            self.graph.neighbors_directed(node, Direction::Outgoing).map(|next| self.graph[next].as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Every task that depends on `task`, directly or not, in name order:
    /// the tasks that stay `NotExecuted` when it fails.
    pub fn downstream(&self, task: &str) -> Vec<&str> {
        let Some(&start) = self.nodes.get(task) else {
            return Vec::new();
        };
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            for next in self.graph.neighbors_directed(node, Direction::Outgoing) {
                if seen.insert(self.graph[next].as_str()) {
                    stack.push(next);
                }
            }
        }
        seen.into_iter().collect()
    }

    fn dependencies_of(&self, node: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.graph.neighbors_directed(node, Direction::Incoming)
    }

    /// One cycle per strongly connected component that has one, ordered by
    /// the cycle's first member; each cycle starts at its smallest name and
    /// follows dependencies (each member depends on the next).
    ///
    /// Kosaraju's algorithm, because petgraph's is iterative there while its
    /// Tarjan is recursive and overflows the stack on a chain of 10,000 tasks.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut cycles: Vec<Vec<String>> =
            kosaraju_scc(&self.graph).into_iter().filter_map(|component| self.cycle_in(&component)).collect();
        cycles.sort();
        cycles
    }

    /// A cycle through the smallest-named member of a strongly connected
    /// component, found by a depth-first search over dependencies in name
    /// order that stays inside the component.
    fn cycle_in(&self, component: &[NodeIndex]) -> Option<Vec<String>> {
        let name = |node: NodeIndex| self.graph[node].as_str();
        let start = *component.iter().min_by_key(|node| name(**node))?;
        if component.len() == 1 && !self.graph.contains_edge(start, start) {
            return None;
        }
        let members: BTreeSet<NodeIndex> = component.iter().copied().collect();
        let sorted_dependencies = |node: NodeIndex| {
            let mut next: Vec<NodeIndex> = self.dependencies_of(node).filter(|n| members.contains(n)).collect();
            next.sort_by_key(|n| std::cmp::Reverse(name(*n)));
            next
        };
        // Each frame is a node on the current path and the dependencies it
        // has left to try (reversed, so `pop` yields name order).
        let mut path = vec![(start, sorted_dependencies(start))];
        let mut visited = BTreeSet::from([start]);
        while let Some((_, next)) = path.last_mut() {
            match next.pop() {
                Some(node) if node == start => {
                    return Some(path.iter().map(|(n, _)| name(*n).to_string()).collect());
                }
                Some(node) => {
                    if visited.insert(node) {
                        path.push((node, sorted_dependencies(node)));
                    }
                }
                None => {
                    path.pop();
                }
            }
        }
        None
    }
}

/// A walk through a [`TaskGraph`] as its tasks end ([`TaskGraph::walk`]):
/// the tasks whose dependencies have all ended and that the caller has not
/// taken yet. Each task that ends costs the edges to its dependents, not a
/// look at every task (which a 1,000-task run did once per task that ended,
/// a million checks; PERF W5).
#[derive(Clone, Debug)]
pub struct Walk<'g> {
    graph: &'g TaskGraph,
    /// Per task (by node index), how many of its dependencies have not ended.
    waiting: Vec<usize>,
    /// Per task, whether it ended.
    ended: Vec<bool>,
    /// Ready and not taken yet, in name order.
    ready: BTreeSet<&'g str>,
}

impl<'g> Walk<'g> {
    /// The first ready task not taken yet, in name order; it stays ready
    /// until [`Walk::take`]n.
    pub fn next_ready(&self) -> Option<&'g str> {
        self.ready.first().copied()
    }

    /// Takes the first ready task, which the caller starts and reports the
    /// end of with [`Walk::ended`]. A ready task the caller decides not to
    /// run needs no taking: [`Walk::ended`] alone takes it out.
    pub fn take(&mut self) -> Option<&'g str> {
        self.ready.pop_first()
    }

    /// Records that `task` ended: the tasks whose last dependency it was are
    /// ready now. A task ended twice, or unknown, changes nothing.
    pub fn ended(&mut self, task: &str) {
        let Some(&node) = self.graph.nodes.get(task) else { return };
        if std::mem::replace(&mut self.ended[node.index()], true) {
            return;
        }
        // A task that ends without being taken is no longer ready either.
        self.ready.remove(task);
        for next in self.graph.graph.neighbors_directed(node, Direction::Outgoing) {
            let waiting = &mut self.waiting[next.index()];
            *waiting = waiting.saturating_sub(1);
            if *waiting == 0 && !self.ended[next.index()] {
                self.ready.insert(self.graph.graph[next].as_str());
            }
        }
    }
}

/// The dependency cycles among `tasks`, ignoring unknown dependencies and
/// tasks that depend on themselves (which validation reports on their own).
pub(crate) fn find_cycles(tasks: &BTreeMap<String, Task>) -> Vec<Vec<String>> {
    let mut graph = DiGraph::with_capacity(tasks.len(), tasks.len());
    let mut nodes = BTreeMap::new();
    for name in tasks.keys() {
        nodes.insert(name.clone(), graph.add_node(name.clone()));
    }
    for (name, task) in tasks {
        let to = nodes[name];
        let from: BTreeSet<NodeIndex> = task
            .dependencies
            .iter()
            .filter_map(|dependency| nodes.get(dependency).copied())
            .filter(|&node| node != to)
            .collect();
        for node in from {
            graph.add_edge(node, to, ());
        }
    }
    TaskGraph { graph, nodes }.cycles()
}
