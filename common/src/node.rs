//! Nodes as the master sees them: registration, heartbeat and status.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// `POST /nodes/`: a node proxy announcing itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// Unique node id (default: the hostname).
    pub id: String,
    /// `host:port` where edges reach this node's proxy.
    pub address: String,
    /// How many containers it is willing to run at once.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// The volume kinds it is configured for; unset (a node that does not say): any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_kinds: Option<Vec<crate::task::VolumeKind>>,
}

fn default_capacity() -> u32 {
    100
}

impl NodeRegistration {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_node_id(&self.id)?;
        let addr_ok = self
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !addr_ok {
            return Err(FieldError::new(
                "address",
                format!(
                    "address {:?} must be host:port where edges reach the node proxy, e.g. \"10.0.0.5:7071\"",
                    self.address
                ),
            ));
        }
        if self.capacity == 0 {
            return Err(FieldError::new("capacity", "capacity must be at least 1"));
        }
        Ok(())
    }
}

/// Node ids appear in container labels and URLs, so keep them simple.
pub fn check_node_id(id: &str) -> Result<(), FieldError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "id",
            format!("node id {id:?} must be 1 to 128 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// `PUT /nodes/{id}/heartbeat`: the node is alive, runs these tasks, and is this busy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Ids of the tasks whose containers run on the node now.
    #[serde(default)]
    pub running: Vec<String>,
    /// 0.0 = idle, 1.0 = at capacity (running / capacity, or the node's own measure).
    #[serde(default)]
    pub load: f64,
}

/// A node as listed by `GET /nodes/` and sent on the watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub address: String,
    pub capacity: u32,
    pub running: Vec<String>,
    pub load: f64,
    /// Wall-clock ms since the Unix epoch of the last heartbeat, if any since the master started.
    pub last_heartbeat_ms: Option<u64>,
    /// False once the node missed 3 heartbeat intervals.
    pub healthy: bool,
    /// The volume kinds it is configured for, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_kinds: Option<Vec<crate::task::VolumeKind>>,
}
