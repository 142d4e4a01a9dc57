//! Volume leases: who may run a stateful task, fenced by a token that only grows.

use serde::{Deserialize, Serialize};

/// `POST /leases/{task_id}`: take the task's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub node: String,
    pub ttl_ms: u64,
}

/// `PUT /leases/{task_id}`: extend a held lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRenewal {
    pub token: u64,
    pub ttl_ms: u64,
}

/// What a holder learns: its fencing token and when the lease lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The fencing generation; larger than every token granted before, for any task.
    pub token: u64,
    /// Wall-clock ms since the Unix epoch.
    pub expires_at: u64,
}

/// A held lease, as listed and sent on the watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub task_id: String,
    pub node: String,
    pub token: u64,
    pub expires_at: u64,
}

/// Bounds on a lease's time to live: long enough to renew, short enough to fail over.
pub const MIN_TTL_MS: u64 = 100;
pub const MAX_TTL_MS: u64 = 3_600_000;
