//! The master's revisioned change feed (`GET /watch`), as sent on the wire.

use serde::{Deserialize, Serialize};

use crate::{acme::AcmeRecord, lease::Lease, node::NodeStatus, task::Task};

/// One change to the master's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    TaskPut {
        // Boxed: a task is much larger than every other event (the wire form is the same).
        task: Box<Task>,
    },
    TaskDeleted {
        id: String,
    },
    NodePut {
        node: NodeStatus,
    },
    /// Removed with `DELETE /nodes/{id}` (a node that was replaced, or retired).
    NodeDeleted {
        id: String,
    },
    LeasePut {
        lease: Lease,
    },
    /// Released by its holder, or lapsed (`expired`).
    LeaseReleased {
        task_id: String,
        token: u64,
        expired: bool,
    },
    /// A certificate, challenge or ordering status for the edges (see [`crate::acme`]).
    AcmePut {
        record: Box<AcmeRecord>,
    },
    AcmeDeleted {
        key: String,
    },
}

/// The answer to `GET /watch?since=REV&epoch=E&timeout_ms=T`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// Identifies this run of the master; a client that sees it change must start over.
    pub epoch: String,
    /// Pass this as `since` next time.
    pub revision: u64,
    /// True when `events` is the whole state (first call, new epoch, or the client fell too far
    /// behind): drop the local copy before applying them.
    pub reset: bool,
    pub events: Vec<WatchEvent>,
}
