//! The master's working state: tasks, nodes and leases in memory, written through a [`Store`],
//! with a revisioned event log that feeds the watch.
//!
//! One mutex guards it all; every mutation writes the store first, so a failed write changes
//! nothing, then updates memory and appends an event. Sub-modules hold the rules per resource.

mod acme;
mod leases;
mod nodes;
pub mod status;
mod tasks;
mod watch;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use shadow_common::{
    error::FieldError,
    lease::{Lease, MAX_TTL_MS},
    node::NodeRegistration,
    task::Task,
    watch::WatchEvent,
};
use tokio::time::Instant;

use crate::{
    clock::Clock,
    store::{Store, StoreError},
};

/// Why a registry call was refused; the API maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        field: Option<String>,
    },
    #[error("{message}")]
    LeaseConflict {
        message: String,
        holder: Option<String>,
    },
    /// Valid, but nothing in the cluster can run it (422).
    #[error("{0}")]
    Unrunnable(FieldError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many events the watch can replay before a client must start over from a snapshot.
const LOG_LEN: usize = 10_000;

/// How long after a lease's expiry the master still refuses it to other nodes by default: the
/// old holder's margin for clock-rate error and a slow kill (see `docs/leases.md`).
pub const DEFAULT_LEASE_GRACE: Duration = Duration::from_millis(500);

pub struct Registry {
    inner: Mutex<Inner>,
    clock: Clock,
    epoch: String,
    heartbeat_interval: Duration,
    lease_grace_ms: u64,
    revision_tx: tokio::sync::watch::Sender<u64>,
}

struct NodeEntry {
    reg: NodeRegistration,
    running: Vec<String>,
    load: f64,
    last_heartbeat: Option<Instant>,
    last_heartbeat_ms: Option<u64>,
    healthy: bool,
}

struct Inner {
    store: Box<dyn Store>,
    tasks: BTreeMap<String, Task>,
    domains: HashMap<String, String>,
    nodes: BTreeMap<String, NodeEntry>,
    leases: BTreeMap<String, Lease>,
    acme: BTreeMap<String, shadow_common::acme::AcmeRecord>,
    acme_account: Option<serde_json::Value>,
    /// Apps' states by task, then node, as the nodes report them (not stored).
    statuses: HashMap<String, BTreeMap<String, shadow_common::status::AppStatus>>,
    /// Each app's last changes of state, newest last (not stored; for the dashboard).
    events: HashMap<String, VecDeque<status::AppEvent>>,
    next_token: u64,
    revision: u64,
    log: VecDeque<(u64, WatchEvent)>,
}

impl Registry {
    /// Loads the durable state. Nodes start unhealthy until their next heartbeat; every lease
    /// is re-armed for its full TTL from now, since its holder may have renewed it while this
    /// master was down (renewals are not written to the store).
    pub fn open(
        mut store: Box<dyn Store>,
        heartbeat_interval: Duration,
    ) -> Result<Self, StoreError> {
        let snap = store.load()?;
        let mut domains = HashMap::new();
        let mut tasks = BTreeMap::new();
        for t in snap.tasks {
            for d in &t.spec.domains {
                domains.insert(d.clone(), t.id.clone());
            }
            tasks.insert(t.id.clone(), t);
        }
        let nodes = snap
            .nodes
            .into_iter()
            .map(|reg| {
                let entry = NodeEntry {
                    reg,
                    running: vec![],
                    load: 0.0,
                    last_heartbeat: None,
                    last_heartbeat_ms: None,
                    healthy: false,
                };
                (entry.reg.id.clone(), entry)
            })
            .collect();
        let clock = Clock::new();
        let now = clock.now_ms();
        let leases = snap
            .leases
            .into_iter()
            .map(|mut l| {
                let ttl = if l.ttl_ms > 0 {
                    l.ttl_ms
                } else {
                    // Written before leases stored their TTL: the longest they could have had.
                    l.expires_at.saturating_sub(l.granted_at).min(MAX_TTL_MS)
                };
                l.expires_at = l.expires_at.max(now + ttl);
                (l.task_id.clone(), l)
            })
            .collect();
        let (revision_tx, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            inner: Mutex::new(Inner {
                store,
                tasks,
                domains,
                nodes,
                leases,
                acme: snap.acme.into_iter().map(|r| (r.key(), r)).collect(),
                acme_account: snap.acme_account,
                statuses: HashMap::new(),
                events: HashMap::new(),
                next_token: snap.next_token.max(1),
                revision: 0,
                log: VecDeque::new(),
            }),
            clock,
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            heartbeat_interval,
            lease_grace_ms: DEFAULT_LEASE_GRACE.as_millis() as u64,
            revision_tx,
        })
    }

    /// How long after expiry a lease stays refused to other nodes.
    pub fn with_lease_grace(mut self, grace: Duration) -> Self {
        self.lease_grace_ms = grace.as_millis() as u64;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave memory ahead of the store (store first).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Counts for the metrics endpoint: tasks, healthy nodes, all nodes, leases.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let g = self.lock();
        let healthy = g.nodes.values().filter(|n| n.healthy).count();
        (g.tasks.len(), healthy, g.nodes.len(), g.leases.len())
    }
}

impl Inner {
    fn emit(&mut self, tx: &tokio::sync::watch::Sender<u64>, ev: WatchEvent) {
        self.revision += 1;
        self.log.push_back((self.revision, ev));
        if self.log.len() > LOG_LEN {
            self.log.pop_front();
        }
        tx.send_replace(self.revision);
    }
}
