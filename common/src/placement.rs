//! Ranking nodes for a task by weighted rendezvous (highest random weight) hashing.
//!
//! Needs no coordination: the edges and the master, seeing the same nodes (all follow the
//! master's state), rank them the same way for a task, and a node's loss moves only its own
//! tasks.

use crate::node::NodeStatus;

/// Busy nodes weigh less; never zero, so a full fleet still routes. Quantized so two edges that
/// saw slightly different load reports still agree.
pub fn weight(n: &NodeStatus) -> f64 {
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
pub fn score(key: &str, id: &str, w: f64) -> f64 {
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
}
