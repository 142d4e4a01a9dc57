//! This edge's own view of node health: active `/healthz` checks plus passive evidence
//! (refused or reset connections). A node goes down after `fails` failures in a row and comes
//! back after `passes` successes in a row.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

// Read on every request; keyed by node ids from the master.
use foldhash::HashMap;

use shadow_common::follower::Follower;

#[derive(Debug, Clone, Copy)]
struct NodeHealth {
    up: bool,
    fails: u32,
    passes: u32,
}

pub struct Health {
    nodes: Mutex<HashMap<String, NodeHealth>>,
    fails: u32,
    passes: u32,
}

impl Health {
    pub fn new(fails: u32, passes: u32) -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::default(),
            fails: fails.max(1),
            passes: passes.max(1),
        })
    }

    /// Unknown nodes are up: the master's heartbeat view already vouched for them.
    pub fn is_up(&self, node: &str) -> bool {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .is_none_or(|h| h.up)
    }

    /// Records one check or passive observation; returns the new state when it flipped.
    pub fn record(&self, node: &str, ok: bool) -> Option<bool> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let h = nodes.entry(node.to_string()).or_insert(NodeHealth {
            up: true,
            fails: 0,
            passes: 0,
        });
        if ok {
            h.fails = 0;
            h.passes += 1;
            if !h.up && h.passes >= self.passes {
                h.up = true;
                return Some(true);
            }
        } else {
            h.passes = 0;
            h.fails += 1;
            if h.up && h.fails >= self.fails {
                h.up = false;
                return Some(false);
            }
        }
        None
    }

    pub fn up_count(&self) -> (usize, usize) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        (nodes.values().filter(|h| h.up).count(), nodes.len())
    }
}

/// Checks every known node's `/healthz` each `interval`, concurrently, each bounded by it.
pub async fn check_forever(health: Arc<Health>, follower: Follower, interval: Duration) {
    let http = reqwest::Client::builder()
        .timeout(interval)
        .connect_timeout(interval)
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nodes: Vec<(String, String)> = follower
            .read()
            .nodes()
            .map(|n| (n.id.clone(), n.address.clone()))
            .collect();
        let checks = nodes.into_iter().map(|(id, addr)| {
            let http = http.clone();
            async move {
                // A Host no task owns, so the node answers for itself.
                let ok = http
                    .get(format!("http://{addr}/healthz"))
                    .header("host", "shadow-health.invalid")
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (id, ok)
            }
        });
        for (id, ok) in futures_util::future::join_all(checks).await {
            if let Some(up) = health.record(&id, ok) {
                if up {
                    tracing::info!(node = %id, "node healthy again");
                } else {
                    tracing::warn!(node = %id, "node unhealthy: no new requests go there");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_down_two_passes_up() {
        let h = Health::new(3, 2);
        assert!(h.is_up("n"));
        assert_eq!(h.record("n", false), None);
        assert_eq!(h.record("n", true), None, "a success resets the failures");
        assert_eq!(h.record("n", false), None);
        assert_eq!(h.record("n", false), None);
        assert_eq!(h.record("n", false), Some(false));
        assert!(!h.is_up("n"));
        assert_eq!(h.record("n", true), None);
        assert_eq!(h.record("n", true), Some(true));
        assert!(h.is_up("n"));
    }
}
