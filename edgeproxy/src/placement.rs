//! Which node serves a task: the holder of its lease if healthy, else the node this edge already
//! sent it to, else weighted rendezvous hashing over the healthy nodes.
//!
//! Rendezvous hashing needs no coordination: two edges that see the same nodes (both follow the
//! master) rank them the same way for a task, and a node's loss moves only its own tasks.

use std::{collections::HashMap, sync::Mutex};

use shadow_common::{node::NodeStatus, state::ClusterState};

/// Tasks this edge has sent somewhere, so their requests keep landing there (sticky).
#[derive(Default)]
pub struct Sticky {
    chosen: Mutex<HashMap<String, String>>,
}

impl Sticky {
    pub fn get(&self, task: &str) -> Option<String> {
        self.chosen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task)
            .cloned()
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
) -> Vec<NodeStatus> {
    let mut out: Vec<NodeStatus> = Vec::new();
    let push = |n: Option<&NodeStatus>, out: &mut Vec<NodeStatus>| {
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
    let healthy: Vec<&NodeStatus> = state.nodes().filter(|n| usable(n)).collect();
    for id in rendezvous(task, healthy.iter().map(|n| (n.id.as_str(), weight(n)))) {
        push(state.node(&id), &mut out);
    }
    out
}

/// The node to try first for `task`: the head of [`candidates`], without ranking every node
/// or cloning more than one (the request path needs the rest only when this one fails).
pub fn first_choice(
    state: &ClusterState,
    sticky: &Sticky,
    task: &str,
    usable: impl Fn(&NodeStatus) -> bool,
) -> Option<NodeStatus> {
    let holder = state.lease(task).and_then(|l| state.node(&l.node));
    if let Some(n) = holder.filter(|n| usable(n)) {
        return Some(n.clone());
    }
    if let Some(n) = sticky.get(task).and_then(|id| state.node(&id)) {
        if usable(n) {
            return Some(n.clone());
        }
    }
    // The best of the rendezvous order: highest score, then the smallest id, as `rendezvous`
    // sorts.
    state
        .nodes()
        .filter(|n| usable(n))
        .map(|n| (score(task, &n.id, weight(n)), n))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.id.cmp(&a.1.id)))
        .map(|(_, n)| n.clone())
}

/// Busy nodes weigh less; never zero, so a full fleet still routes. Quantized so two edges that
/// saw slightly different load reports still agree.
fn weight(n: &NodeStatus) -> f64 {
    let free = (1.0 - n.load).clamp(0.05, 1.0);
    (free * 10.0).round().max(1.0) / 10.0
}

/// Nodes ranked for `key` by weighted rendezvous (highest random weight) hashing.
pub fn rendezvous<'a>(key: &str, nodes: impl Iterator<Item = (&'a str, f64)>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = nodes.map(|(id, w)| (score(key, id, w), id)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, id)| id.to_string()).collect()
}

/// The weighted rendezvous score of node `id` for `key`: a uniform draw in (0, 1) from the
/// pair's hash, turned into `-w / ln(u)`.
fn score(key: &str, id: &str, w: f64) -> f64 {
    let h = fnv1a(key.as_bytes(), id.as_bytes());
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -w / u.ln()
}

/// FNV-1a over `a`, a separator and `b`, then a final mix: stable across builds and platforms
/// (std's hasher is not promised to be).
fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0xffu8].iter()).chain(b.iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: FNV's low bits are weak.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_deterministic_and_moves_only_the_lost_nodes_tasks() {
        let nodes = [("a", 1.0), ("b", 1.0), ("c", 1.0)];
        let before: Vec<String> = (0..300)
            .map(|t| rendezvous(&format!("task-{t}"), nodes.iter().copied())[0].clone())
            .collect();
        let again: Vec<String> = (0..300)
            .map(|t| rendezvous(&format!("task-{t}"), nodes.iter().copied())[0].clone())
            .collect();
        assert_eq!(before, again);
        for n in ["a", "b", "c"] {
            let share = before.iter().filter(|x| *x == n).count();
            assert!((60..=140).contains(&share), "{n} got {share} of 300");
        }
        let without_c = [("a", 1.0), ("b", 1.0)];
        for (t, first) in before.iter().enumerate() {
            let now = rendezvous(&format!("task-{t}"), without_c.iter().copied())[0].clone();
            if first != "c" {
                assert_eq!(&now, first, "task-{t} moved though its node stayed");
            }
        }
    }

    #[test]
    fn weight_shifts_tasks_towards_free_nodes() {
        let nodes = [("busy", 0.1), ("free", 1.0)];
        let free = (0..1000)
            .filter(|t| rendezvous(&format!("t{t}"), nodes.iter().copied())[0] == "free")
            .count();
        assert!(free > 800, "free node got {free} of 1000");
    }

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
        let mut seen_holder = 0;
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
            assert_eq!(
                first.map(|n| n.id),
                all.first().map(|n| n.id.clone()),
                "{task}"
            );
        }
        assert!(seen_holder > 0);
        assert!(first_choice(&state, &sticky, "x", |_| false).is_none());
    }
}
