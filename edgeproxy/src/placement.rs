//! Which node serves a task: the holder of its lease if healthy, else the node this edge already
//! sent it to, else weighted rendezvous hashing over the healthy nodes
//! ([`shadow_common::placement`], the ranking the master uses too).

use std::sync::{Arc, Mutex};

// Read and written on every request; keyed by task ids from the master.
use foldhash::HashMap;

use shadow_common::{
    node::NodeStatus,
    placement::{rendezvous, score, weight},
    state::ClusterState,
};

/// Tasks this edge has sent somewhere, so their requests keep landing there (sticky).
#[derive(Default)]
pub struct Sticky {
    chosen: Mutex<HashMap<String, String>>,
}

impl Sticky {
    pub fn get(&self, task: &str) -> Option<String> {
        self.with(task, |node| node.map(str::to_owned))
    }

    /// `f` of the node chosen for `task`, without copying its id (the request path).
    pub fn with<R>(&self, task: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        let chosen = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        f(chosen.get(task).map(String::as_str))
    }
    /// Forgets the choices of tasks `keep` refuses (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.chosen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|task, _| keep(task));
    }
    pub fn set(&self, task: &str, node: &str) {
        let mut m = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(task).map(String::as_str) != Some(node) {
            m.insert(task.to_string(), node.to_string());
        }
    }
}

/// The nodes to try for `task`, best first, among those `usable` says may get traffic.
pub fn candidates(
    state: &ClusterState,
    sticky: &Sticky,
    task: &str,
    usable: impl Fn(&NodeStatus) -> bool,
) -> Vec<Arc<NodeStatus>> {
    let mut out: Vec<Arc<NodeStatus>> = Vec::new();
    let push = |n: Option<&Arc<NodeStatus>>, out: &mut Vec<Arc<NodeStatus>>| {
        if let Some(n) = n {
            if usable(n) && !out.iter().any(|o| o.id == n.id) {
                out.push(n.clone());
            }
        }
    };
    if let Some(lease) = state.lease(task) {
        push(state.node(&lease.node), &mut out);
    }
    if let Some(id) = sticky.get(task) {
        push(state.node(&id), &mut out);
    }
    let healthy: Vec<&Arc<NodeStatus>> = state.nodes().filter(|n| usable(n)).collect();
    for id in rendezvous(task, healthy.iter().map(|n| (n.id.as_str(), weight(n)))) {
        push(state.node(&id), &mut out);
    }
    out
}

/// The node to try first for a task, and why.
pub struct FirstChoice {
    pub node: Arc<NodeStatus>,
    /// Chosen because the sticky map names it: a success there need not be written back.
    pub sticky: bool,
}

/// The node to try first for `task`: the head of [`candidates`], without ranking every node
/// or copying anything but a pointer (the request path needs the rest only when this one fails).
pub fn first_choice(
    state: &ClusterState,
    sticky: &Sticky,
    task: &str,
    usable: impl Fn(&NodeStatus) -> bool,
) -> Option<FirstChoice> {
    let holder = state.lease(task).and_then(|l| state.node(&l.node));
    if let Some(n) = holder.filter(|n| usable(n)) {
        return Some(FirstChoice {
            node: n.clone(),
            sticky: false,
        });
    }
    let chosen = sticky.with(task, |id| id.and_then(|id| state.node(id)).cloned());
    if let Some(node) = chosen.filter(|n| usable(n)) {
        return Some(FirstChoice { node, sticky: true });
    }
    // The best of the rendezvous order: highest score, then the smallest id, as `rendezvous`
    // sorts.
    state
        .nodes()
        .filter(|n| usable(n))
        .map(|n| (score(task, &n.id, weight(n)), n))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.id.cmp(&a.1.id)))
        .map(|(_, n)| FirstChoice {
            node: n.clone(),
            sticky: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_choice_is_always_the_head_of_the_candidates() {
        use shadow_common::{lease::Lease, watch::WatchEvent};
        let mut state = ClusterState::default();
        for n in 0..7 {
            state.apply(&WatchEvent::NodePut {
                node: NodeStatus {
                    id: format!("n{n}"),
                    address: format!("127.0.0.1:{}", 9000 + n),
                    capacity: 10,
                    running: vec![],
                    load: f64::from(n % 4) / 4.0,
                    last_heartbeat_ms: Some(0),
                    healthy: n != 3,
                    volume_kinds: None,
                },
            });
        }
        let sticky = Sticky::default();
        let (mut seen_holder, mut seen_sticky) = (0, 0);
        for t in 0..400 {
            let task = format!("task-{t}");
            if t % 3 == 0 {
                sticky.set(&task, &format!("n{}", t % 7));
            }
            if t % 5 == 0 {
                state.apply(&WatchEvent::LeasePut {
                    lease: Lease {
                        task_id: task.clone(),
                        node: format!("n{}", (t / 5) % 7),
                        token: t,
                        expires_at: u64::MAX,
                        granted_at: 0,
                        ttl_ms: 1_000,
                    },
                });
                seen_holder += 1;
            }
            let all = candidates(&state, &sticky, &task, |n| n.healthy);
            let first = first_choice(&state, &sticky, &task, |n| n.healthy);
            if let Some(FirstChoice { node, sticky: true }) = &first {
                assert_eq!(sticky.get(&task).as_ref(), Some(&node.id), "{task}");
                seen_sticky += 1;
            }
            assert_eq!(
                first.map(|c| c.node.id.clone()),
                all.first().map(|n| n.id.clone()),
                "{task}"
            );
        }
        assert!(seen_holder > 0 && seen_sticky > 0);
        assert!(first_choice(&state, &sticky, "x", |_| false).is_none());
    }
}
