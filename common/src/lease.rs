//! Volume leases: who may run a stateful task, fenced by a token that only grows.
//!
//! A node holds its leases as one session: it renews all of them in a single call
//! ([`SessionRenewal`]) every period, and learns per lease whether it was renewed or lost. The
//! arithmetic that keeps one writer per volume is in `docs/leases.md`.

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
    /// Wall-clock ms since the Unix epoch at which the master stops counting it as held. Another
    /// node may take it only after a further grace period (see `docs/leases.md`).
    pub expires_at: u64,
    /// Wall-clock ms at which this token was granted.
    #[serde(default)]
    pub granted_at: u64,
    /// The time to live the holder asked for; every renewal extends the lease by this much.
    #[serde(default)]
    pub ttl_ms: u64,
}

/// One lease a node holds, as named in a session renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldLease {
    pub task_id: String,
    pub token: u64,
}

/// `POST /nodes/{id}/renew`: renew every lease the node holds, in one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRenewal {
    pub ttl_ms: u64,
    pub leases: Vec<HeldLease>,
}

/// A lease the master renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewedLease {
    pub task_id: String,
    pub token: u64,
    pub expires_at: u64,
}

/// A lease the node no longer holds: lapsed, released or taken by a newer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostLease {
    pub task_id: String,
    pub token: u64,
    /// What happened, for the node's log.
    pub error: String,
}

/// The answer to a [`SessionRenewal`]: every lease named is in exactly one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRenewed {
    pub renewed: Vec<RenewedLease>,
    pub lost: Vec<LostLease>,
}

/// The node's answer header naming the node that holds a stateful task's lease, so the edge can
/// send the request there.
pub const HOLDER_HEADER: http::HeaderName = http::HeaderName::from_static("x-shadow-lease-holder");

/// The edge's request header naming a node it cannot reach that holds (or held) the task's
/// lease: the receiving node then waits for that lease to lapse instead of sending the request
/// back. The edge drops it from what clients send.
pub const HOLDER_DOWN_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-shadow-holder-down");

/// Bounds on a lease's time to live: long enough to renew, short enough to fail over.
pub const MIN_TTL_MS: u64 = 100;
pub const MAX_TTL_MS: u64 = 3_600_000;

/// Most leases one session renewal may name (a node runs at most its capacity of apps).
pub const MAX_SESSION_LEASES: usize = 10_000;
