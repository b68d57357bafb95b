//! The task DAG helper the agent uses (DESIGN §9.2): topological order,
//! ready tasks given the finished ones, downstream tasks, and its errors.

use std::collections::{BTreeMap, BTreeSet};

use xene_model::{DagError, Step, Task, TaskGraph};

/// Tasks named by `(name, dependencies)`, each with one step.
fn tasks(spec: &[(&str, &[&str])]) -> BTreeMap<String, Task> {
    spec.iter()
        .map(|(name, dependencies)| {
            let task = Task {
                dependencies: dependencies.iter().map(|d| d.to_string()).collect(),
                steps: vec![Step { name: "s".into(), run: "true".into(), env: Default::default(), timeout: None }],
                ..Task::default()
            };
            (name.to_string(), task)
        })
        .collect()
}

/// `prepare` fans out to `a`, `b`, `c`, which fan in to `report`.
fn diamond() -> TaskGraph {
    TaskGraph::new(&tasks(&[
        ("report", &["a", "b", "c"]),
        ("c", &["prepare"]),
        ("b", &["prepare"]),
        ("a", &["prepare"]),
        ("prepare", &[]),
    ]))
    .unwrap()
}

#[test]
fn topological_order_is_deterministic() {
    let graph = diamond();
    assert_eq!(graph.len(), 5);
    assert_eq!(graph.topological_order(), ["prepare", "a", "b", "c", "report"]);
    let chain = TaskGraph::new(&tasks(&[("z", &[]), ("y", &["z"]), ("x", &["y"])])).unwrap();
    assert_eq!(chain.topological_order(), ["z", "y", "x"]);
}

#[test]
fn ready_tasks_follow_the_finished_set() {
    let graph = diamond();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    assert_eq!(graph.ready_tasks(&finished), ["prepare"]);
    finished.insert("prepare".into());
    assert_eq!(graph.ready_tasks(&finished), ["a", "b", "c"]);
    finished.insert("a".into());
    finished.insert("c".into());
    assert_eq!(graph.ready_tasks(&finished), ["b"]);
    finished.insert("b".into());
    assert_eq!(graph.ready_tasks(&finished), ["report"]);
    finished.insert("report".into());
    assert!(graph.ready_tasks(&finished).is_empty());
    // Borrowed names work as well as owned ones.
    let borrowed: BTreeSet<&str> = ["prepare"].into();
    assert_eq!(graph.ready_tasks(&borrowed), ["a", "b", "c"]);
}

#[test]
fn a_walk_makes_a_task_ready_once_its_last_dependency_ended() {
    let graph = diamond();
    let mut walk = graph.walk();
    assert_eq!(walk.next_ready(), Some("prepare"));
    assert_eq!(walk.take(), Some("prepare"));
    assert_eq!(walk.next_ready(), None, "taken, and nothing else is ready before it ends");
    walk.ended("prepare");
    let mut taken = Vec::new();
    while let Some(task) = walk.take() {
        taken.push(task);
    }
    assert_eq!(taken, ["a", "b", "c"]);
    walk.ended("a");
    walk.ended("a");
    walk.ended("nope");
    walk.ended("c");
    assert_eq!(walk.next_ready(), None, "report still waits for b, however often a ended");
    walk.ended("b");
    assert_eq!(walk.take(), Some("report"));
    walk.ended("report");
    assert_eq!(walk.take(), None);
}

/// The walk answers what `ready_tasks` answers, at every point of a run of W5's shape (10
/// layers of 10, each task after two of the layer before, one listed twice) whose tasks end in
/// a scrambled order.
#[test]
fn a_walk_agrees_with_ready_tasks_whatever_the_order_tasks_end_in() {
    let name = |layer: usize, i: usize| format!("t{layer}-{i}");
    let mut spec: Vec<(String, Vec<String>)> = Vec::new();
    for layer in 0..10 {
        for i in 0..10 {
            let dependencies = match layer {
                0 => vec![],
                _ if i == 3 => vec![name(layer - 1, 3), name(layer - 1, 3)],
                _ => vec![name(layer - 1, i), name(layer - 1, (i + 1) % 10)],
            };
            spec.push((name(layer, i), dependencies));
        }
    }
    let borrowed: Vec<(&str, Vec<&str>)> =
        spec.iter().map(|(n, d)| (n.as_str(), d.iter().map(String::as_str).collect())).collect();
    let spec: Vec<(&str, &[&str])> = borrowed.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    let graph = TaskGraph::new(&tasks(&spec)).unwrap();
    for seed in [1u64, 7, 1234] {
        let mut walk = graph.walk();
        let (mut ended, mut running): (BTreeSet<&str>, Vec<&str>) = (BTreeSet::new(), Vec::new());
        let mut state = seed;
        while ended.len() < graph.len() {
            let expected: Vec<&str> = graph.ready_tasks(&ended).into_iter().filter(|t| !running.contains(t)).collect();
            let mut ready = Vec::new();
            while let Some(task) = walk.take() {
                ready.push(task);
            }
            assert_eq!(ready, expected, "seed {seed}, after {} ended", ended.len());
            running.extend(ready);
            // End one running task picked by a small linear congruential generator.
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let task = running.swap_remove((state >> 33) as usize % running.len());
            walk.ended(task);
            ended.insert(task);
        }
        assert_eq!(walk.take(), None);
    }
}

#[test]
fn downstream_tasks_are_the_ones_a_failure_skips() {
    let graph = diamond();
    assert_eq!(graph.downstream("prepare"), ["a", "b", "c", "report"]);
    assert_eq!(graph.downstream("b"), ["report"]);
    assert!(graph.downstream("report").is_empty());
    assert!(graph.downstream("nope").is_empty());
}

#[test]
fn errors_name_the_problem() {
    let unknown = TaskGraph::new(&tasks(&[("a", &["b"])])).unwrap_err();
    assert_eq!(unknown, DagError::UnknownDependency { task: "a".into(), dependency: "b".into() });
    let cycle = TaskGraph::new(&tasks(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])])).unwrap_err();
    assert_eq!(cycle.to_string(), "dependency cycle: a -> c -> b -> a");
    let own = TaskGraph::new(&tasks(&[("a", &["a"])])).unwrap_err();
    assert_eq!(own.to_string(), "dependency cycle: a -> a");
}

#[test]
fn large_graphs_are_fine() {
    // A chain of 10,000 tasks, the most a pipeline may hold: deep enough to
    // break a recursive walk.
    let names: Vec<String> = (0..10_000).map(|i| format!("t{i:05}")).collect();
    let mut spec: BTreeMap<String, Task> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut task = Task::default();
        if i > 0 {
            task.dependencies.push(names[i - 1].clone());
        }
        spec.insert(name.clone(), task);
    }
    let graph = TaskGraph::new(&spec).unwrap();
    assert_eq!(graph.topological_order().len(), 10_000);
    // Closing the chain makes one cycle of all of them.
    spec.get_mut("t00000").unwrap().dependencies.push("t09999".into());
    let Err(DagError::Cycle { members }) = TaskGraph::new(&spec) else {
        panic!("no cycle found");
    };
    assert_eq!(members.len(), 10_000);
    assert_eq!(members[0], "t00000");
    assert_eq!(members[1], "t09999");
}

#[test]
fn dependents_are_direct_only() {
    let workflow = xene_model::parse_manifest(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: d}\nspec:\n  pipelines:\n    p:\n      tasks:\n        a: {steps: [{name: s, run: 'true'}]}\n        b: {dependencies: [a], steps: [{name: s, run: 'true'}]}\n        c: {dependencies: [b], steps: [{name: s, run: 'true'}]}\n",
    )
    .expect("valid");
    let graph = xene_model::TaskGraph::from_pipeline(&workflow.spec.pipelines["p"]).expect("dag");
    assert_eq!(graph.dependents("a"), vec!["b"]);
    assert_eq!(graph.downstream("a"), vec!["b", "c"]);
    assert!(graph.dependents("c").is_empty());
    assert!(graph.dependents("nope").is_empty());
}
