//! The edge's routing lookup per request, with 100 000 tasks (or `SHADOW_BENCH_TASKS`) and 10
//! nodes: Host → task (`ClusterState::task_by_domain`) → the node to try (`placement::first_choice`,
//! what a request computes) or every node in order (`placement::candidates`, after a failure).
//!
//! Run with `cargo bench -p shadow-edgeproxy --bench lookup`; `contrib/bench/run.sh` runs it
//! for 10 000 and 100 000 tasks and puts the figures in `docs/benchmarks.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shadow_common::{
    node::NodeStatus,
    state::ClusterState,
    task::{Task, TaskSpec},
    watch::WatchEvent,
};
use shadow_edgeproxy::placement::{candidates, first_choice, Sticky};

/// Registered tasks, from `SHADOW_BENCH_TASKS` (default 100 000).
fn tasks() -> usize {
    std::env::var("SHADOW_BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}
const NODES: usize = 10;

fn state(tasks: usize) -> ClusterState {
    let mut state = ClusterState::default();
    for n in 0..NODES {
        state.apply(&WatchEvent::NodePut {
            node: NodeStatus {
                id: format!("node-{n}"),
                address: format!("10.0.0.{n}:7071"),
                capacity: 100,
                // A full node: what it runs is in every heartbeat, so in every copy of it.
                running: (0..100).map(|k| format!("{:032x}", n * 100 + k)).collect(),
                load: (n as f64) / 20.0,
                last_heartbeat_ms: Some(0),
                healthy: true,
                volume_kinds: None,
            },
        });
    }
    for t in 0..tasks {
        let spec = TaskSpec::from_json(
            format!(
                r#"{{"name":"app{t}","domains":["app{t}.example.com"],"image":"shadow-test/counter:latest","volume":{{"kind":"local"}}}}"#
            )
            .as_bytes(),
        )
        .expect("a valid spec");
        state.apply(&WatchEvent::TaskPut {
            task: Box::new(Task {
                id: format!("{t:032x}"),
                spec,
            }),
        });
    }
    state
}

fn lookup(c: &mut Criterion) {
    let tasks = tasks();
    let state = state(tasks);
    let sticky = Sticky::default();
    // Half the tasks were routed before (sticky), as on a busy edge.
    for t in (0..tasks).step_by(2) {
        sticky.set(&format!("{t:032x}"), &format!("node-{}", t % NODES));
    }
    let domains: Vec<String> = (0..tasks)
        .map(|t| format!("app{}.example.com", (t * 7919) % tasks))
        .collect();
    let mut i = 0usize;
    c.bench_function(&format!("task_by_domain ({tasks} tasks)"), |b| {
        b.iter(|| {
            i = (i + 1) % tasks;
            black_box(state.task_by_domain(black_box(&domains[i])))
        })
    });
    // Host → task → nodes, with each of the two ways to pick them.
    let mut routed = |what: &str, pick: &dyn Fn(&str) -> usize| {
        let mut i = 0usize;
        c.bench_function(
            &format!("task_by_domain + {what} ({tasks} tasks, {NODES} nodes)"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % tasks;
                    let task = state
                        .task_by_domain(black_box(&domains[i]))
                        .expect("a known domain");
                    black_box(pick(&task.id))
                })
            },
        );
    };
    routed("candidates", &|id| {
        candidates(&state, &sticky, id, |n| n.healthy).len()
    });
    routed("first_choice", &|id| {
        usize::from(first_choice(&state, &sticky, id, |n| n.healthy).is_some())
    });
    c.bench_function(&format!("unknown host ({tasks} tasks)"), |b| {
        b.iter(|| black_box(state.task_by_domain(black_box("nope.example.org"))))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
