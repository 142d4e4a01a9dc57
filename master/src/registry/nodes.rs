//! Node rules: registration, heartbeats, and health derived from missed heartbeats.

use shadow_common::{
    error::FieldError,
    node::{Heartbeat, NodeRegistration, NodeStatus},
    watch::WatchEvent,
};
use tokio::time::Instant;

use super::{NodeEntry, Registry, RegistryError};

/// A node is unhealthy after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

impl NodeEntry {
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
        self.change(
            |_| Ok(reg),
            |s, reg| s.put_node(reg),
            |g, reg| self.registered(g, reg),
        )
        .await
    }

    fn registered(&self, g: &mut super::Inner, reg: NodeRegistration) -> NodeStatus {
        let now_ms = self.clock.now_ms();
        let entry = g.nodes.entry(reg.id.clone()).or_insert_with(|| NodeEntry {
            reg: reg.clone(),
            running: vec![],
            load: 0.0,
            last_heartbeat: None,
            last_heartbeat_ms: None,
            healthy: false,
        });
        entry.reg = reg;
        entry.last_heartbeat = Some(Instant::now());
        entry.last_heartbeat_ms = Some(now_ms);
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

    /// Records a heartbeat; emits a change only when what others route by changed.
    pub fn heartbeat(&self, id: &str, hb: Heartbeat) -> Result<NodeStatus, RegistryError> {
        if !(0.0..=1000.0).contains(&hb.load) {
            return Err(RegistryError::Invalid(FieldError::new(
                "load",
                "load must be a number from 0 (idle) upwards, 1 = at capacity",
            )));
        }
        let mut g = self.lock();
        let now_ms = self.clock.now_ms();
        let entry = g.nodes.get_mut(id).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "node {id:?} is not registered; register it with POST /nodes/ first"
            ))
        })?;
        let mut running = hb.running;
        running.sort();
        let changed =
            !entry.healthy || entry.running != running || (entry.load - hb.load).abs() > 0.05;
        entry.running = running;
        entry.load = hb.load;
        entry.last_heartbeat = Some(Instant::now());
        entry.last_heartbeat_ms = Some(now_ms);
        entry.healthy = true;
        let status = entry.status();
        if changed {
            g.emit(
                &self.revision_tx,
                WatchEvent::NodePut {
                    node: status.clone(),
                },
            );
        }
        Ok(status)
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

    /// Marks nodes that missed their heartbeats unhealthy; called by the ticker.
    pub(super) fn check_node_health(&self) {
        let deadline = self.heartbeat_interval * MISSED_HEARTBEATS;
        let mut g = self.lock();
        let now = Instant::now();
        let mut lapsed = vec![];
        for (id, n) in g.nodes.iter_mut() {
            let alive = n
                .last_heartbeat
                .is_some_and(|t| now.duration_since(t) <= deadline);
            if n.healthy && !alive {
                n.healthy = false;
                lapsed.push(id.clone());
            }
        }
        for id in lapsed {
            tracing::warn!(node = %id, "node missed {MISSED_HEARTBEATS} heartbeats; marked unhealthy");
            if let Some(status) = g.nodes.get(&id).map(NodeEntry::status) {
                g.emit(&self.revision_tx, WatchEvent::NodePut { node: status });
            }
        }
    }
}
