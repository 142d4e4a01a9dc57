//! Node rules: registration, heartbeats, and health derived from missed heartbeats.

use super::{Inner, NodeEntry, Registry, RegistryError};
use crate::store::NodeLive;
use shadow_common::{
    error::FieldError,
    node::{Heartbeat, NodeRegistration, NodeStatus},
    watch::WatchEvent,
};

/// A node is unhealthy after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

impl NodeEntry {
    /// A node just registered (or learned of): unhealthy until its first heartbeat counts.
    pub(super) fn new(reg: NodeRegistration) -> Self {
        Self {
            reg,
            running: vec![],
            load: 0.0,
            last_heartbeat_ms: None,
            healthy: false,
        }
    }

    pub(super) fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.reg.id.clone(),
            address: self.reg.address.clone(),
            capacity: self.reg.capacity,
            running: self.running.clone(),
            load: self.load,
            last_heartbeat_ms: self.last_heartbeat_ms,
            healthy: self.healthy,
            volume_kinds: self.reg.volume_kinds.clone(),
        }
    }
}

impl Registry {
    /// Registers or re-registers a node; registering counts as a heartbeat.
    pub async fn register_node(&self, reg: NodeRegistration) -> Result<NodeStatus, RegistryError> {
        reg.validate().map_err(RegistryError::Invalid)?;
        let now_ms = self.clock.now_ms();
        self.change(
            |g| {
                let (running, load) = g
                    .nodes
                    .get(&reg.id)
                    .map_or((vec![], 0.0), |n| (n.running.clone(), n.load));
                let live = NodeLive {
                    running,
                    load,
                    healthy: true,
                    at_ms: now_ms,
                };
                Ok((reg.clone(), live))
            },
            |s, (reg, live)| {
                s.put_node(reg)?;
                s.put_node_live(&reg.id, live)
            },
            |g, (reg, live)| self.node_seen(g, reg, live),
        )
        .await
    }

    /// Memory after a registration (`reg`) or a heartbeat that changed what others route by;
    /// announces the node.
    fn node_seen(&self, g: &mut Inner, reg: NodeRegistration, live: NodeLive) -> NodeStatus {
        let entry = g
            .nodes
            .entry(reg.id.clone())
            .or_insert_with(|| NodeEntry::new(reg.clone()));
        entry.reg = reg;
        entry.running = live.running;
        entry.load = live.load;
        entry.last_heartbeat_ms = Some(live.at_ms);
        entry.healthy = true;
        let status = entry.status();
        g.emit(
            &self.revision_tx,
            WatchEvent::NodePut {
                node: status.clone(),
            },
        );
        status
    }

    /// Records a heartbeat; emits a change only when what others route by changed (through the
    /// store when masters share one; else a heartbeat only touches the node's time there).
    pub async fn heartbeat(&self, id: &str, hb: Heartbeat) -> Result<NodeStatus, RegistryError> {
        if !(0.0..=1000.0).contains(&hb.load) {
            return Err(RegistryError::Invalid(FieldError::new(
                "load",
                "load must be a number from 0 (idle) upwards, 1 = at capacity",
            )));
        }
        let now_ms = self.clock.now_ms();
        let mut running = hb.running;
        running.sort();
        let live = NodeLive {
            running,
            load: hb.load,
            healthy: true,
            at_ms: now_ms,
        };
        let not_found = || {
            RegistryError::NotFound(format!(
                "node {id:?} is not registered; register it with POST /nodes/ first"
            ))
        };
        let changed = |g: &Inner| -> Result<(NodeRegistration, bool), RegistryError> {
            let entry = g.nodes.get(id).ok_or_else(not_found)?;
            let changed = !entry.healthy
                || entry.running != live.running
                || (entry.load - live.load).abs() > 0.05;
            Ok((entry.reg.clone(), changed))
        };
        let (_, moved) = changed(&self.lock())?;
        if !self.shared {
            let mut g = self.lock();
            let entry = g.nodes.get_mut(id).ok_or_else(not_found)?;
            entry.running = live.running;
            entry.load = live.load;
            entry.last_heartbeat_ms = Some(now_ms);
            entry.healthy = true;
            let status = entry.status();
            if moved {
                g.emit(
                    &self.revision_tx,
                    WatchEvent::NodePut {
                        node: status.clone(),
                    },
                );
            }
            return Ok(status);
        }
        if !moved {
            let node = id.to_owned();
            self.store.run(move |s| s.touch_node(&node, now_ms)).await?;
            let mut g = self.lock();
            let entry = g.nodes.get_mut(id).ok_or_else(not_found)?;
            entry.last_heartbeat_ms = entry.last_heartbeat_ms.max(Some(now_ms));
            return Ok(entry.status());
        }
        self.change(
            |g| changed(g).map(|(reg, _)| (reg, live.clone())),
            |s, (reg, live)| s.put_node_live(&reg.id, live),
            |g, (reg, live)| self.node_seen(g, reg, live),
        )
        .await
    }

    /// Forgets a node. Only an unhealthy one: a live node would register itself again at its
    /// next heartbeat, and removing it would hide it from the edges until then. Its leases are
    /// left to lapse, so no other node takes a volume it may still be writing.
    pub async fn delete_node(&self, id: &str) -> Result<(), RegistryError> {
        let id = id.to_owned();
        self.change(
            |g| Self::deletable(g, &id),
            {
                let id = id.clone();
                move |s, ()| s.delete_node(&id)
            },
            |g, ()| {
                g.nodes.remove(&id);
                for per_node in g.statuses.values_mut() {
                    per_node.remove(&id);
                }
                g.emit(
                    &self.revision_tx,
                    WatchEvent::NodeDeleted { id: id.clone() },
                );
            },
        )
        .await
    }

    fn deletable(g: &mut super::Inner, id: &str) -> Result<(), RegistryError> {
        let entry = g.nodes.get(id).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "node {id:?} is not registered; list nodes with GET /nodes/"
            ))
        })?;
        if entry.healthy {
            return Err(RegistryError::Conflict {
                message: format!(
                    "node {id:?} is healthy (it sends heartbeats); stop its shadow-nodeproxy first, then delete it once GET /nodes/ shows it unhealthy"
                ),
                field: None,
            });
        }
        Ok(())
    }

    pub fn list_nodes(&self) -> Vec<NodeStatus> {
        self.lock().nodes.values().map(NodeEntry::status).collect()
    }

    /// Marks nodes that missed their heartbeats unhealthy; called by the ticker. Masters
    /// sharing a store judge by the heartbeats any of them took, and one of them writes it.
    pub(super) async fn check_node_health(&self) {
        if self.shared {
            match self.store.run(|s| s.node_heartbeats()).await {
                Ok(beats) => {
                    let mut g = self.lock();
                    for (id, at) in beats {
                        if let Some(n) = g.nodes.get_mut(&id) {
                            n.last_heartbeat_ms = n.last_heartbeat_ms.max(Some(at));
                        }
                    }
                }
                // Without the others' heartbeats, this master cannot judge.
                Err(_) => return,
            }
        }
        let deadline = (self.heartbeat_interval * MISSED_HEARTBEATS).as_millis() as u64;
        let now = self.clock.now_ms();
        let lapsed = |g: &Inner| -> Vec<(String, NodeLive)> {
            g.nodes
                .iter()
                .filter(|(_, n)| {
                    n.healthy
                        && n.last_heartbeat_ms
                            .is_none_or(|t| now.saturating_sub(t) > deadline)
                })
                .map(|(id, n)| {
                    let live = NodeLive {
                        running: n.running.clone(),
                        load: n.load,
                        healthy: false,
                        at_ms: n.last_heartbeat_ms.unwrap_or(0),
                    };
                    (id.clone(), live)
                })
                .collect()
        };
        if lapsed(&self.lock()).is_empty() {
            return;
        }
        let marked = self
            .change(
                |g| Ok(lapsed(g)),
                |s, nodes| {
                    for (id, live) in nodes {
                        s.put_node_live(id, live)?;
                    }
                    Ok(())
                },
                |g, nodes| {
                    for (id, _) in nodes {
                        tracing::warn!(node = %id, "node missed {MISSED_HEARTBEATS} heartbeats; marked unhealthy");
                        if let Some(n) = g.nodes.get_mut(&id) {
                            n.healthy = false;
                            let status = n.status();
                            g.emit(&self.revision_tx, WatchEvent::NodePut { node: status });
                        }
                    }
                },
            )
            .await;
        if let Err(e) = marked {
            tracing::warn!(error = %e, "cannot mark nodes unhealthy; will retry");
        }
    }
}
