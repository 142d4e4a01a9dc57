//! The master's working state: tasks, nodes and leases in memory, written through a [`Store`],
//! with a revisioned event log that feeds the watch.
//!
//! One mutex guards the memory, and is never held across I/O. A durable change ([`Registry::change`])
//! is decided under it, written by the store's thread with no lock held, and then applied to
//! memory with an event, so a failed write changes nothing and `/watch`, heartbeats and renewals
//! never wait for a disk. Durable changes go one at a time. Sub-modules hold the rules per
//! resource.
//!
//! Masters that share a store (PostgreSQL) each keep this memory as a copy: a change is
//! decided on the copy and written only if no other master wrote since the copy was last
//! brought up to date (else it catches up and decides again), and every master applies the
//! store's change log ([`follow`]), so revisions and the watch are the same on all of them.

mod acme;
mod follow;
mod leases;
mod nodes;
pub mod status;
mod tasks;
mod watch;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::{
    clock::Clock,
    store::{write_shared, Store, StoreError, StoreThread},
};
use shadow_common::{
    error::FieldError,
    lease::{Lease, MAX_TTL_MS},
    node::NodeRegistration,
    task::Task,
    watch::WatchEvent,
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

/// How often a change is decided again because another master wrote first, before giving up.
const MAX_ATTEMPTS: u32 = 5;

/// A write begun on the store's thread (its lock held) and not yet committed: rolled back if
/// the change is abandoned (its caller went away).
struct OpenWrite<'a>(&'a StoreThread<dyn Store>);

impl Drop for OpenWrite<'_> {
    fn drop(&mut self) {
        self.0.send(|s| s.rollback());
    }
}

/// How long after a lease's expiry the master still refuses it to other nodes by default: the
/// old holder's margin for clock-rate error and a slow kill (see `docs/leases.md`).
pub const DEFAULT_LEASE_GRACE: Duration = Duration::from_millis(500);

pub struct Registry {
    inner: Mutex<Inner>,
    /// The durable store, on its own thread.
    store: StoreThread<dyn Store>,
    /// Held through one durable change: plan, write, apply.
    writer: tokio::sync::Mutex<()>,
    clock: Clock,
    /// The watch's epoch: this run of the master, or the fleet when masters share a store.
    epoch: String,
    /// Whether other masters write the same store (see the module docs).
    shared: bool,
    heartbeat_interval: Duration,
    lease_grace_ms: u64,
    revision_tx: tokio::sync::watch::Sender<u64>,
    /// Set when the master stops: open long polls answer at once instead of holding the
    /// graceful stop for their whole wait.
    closing: tokio::sync::watch::Sender<bool>,
}

struct NodeEntry {
    reg: NodeRegistration,
    running: Vec<String>,
    load: f64,
    last_heartbeat_ms: Option<u64>,
    healthy: bool,
}

struct Inner {
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
    /// A watcher at this revision or later can be answered from `log`; one further behind
    /// gets the whole state.
    log_floor: u64,
    /// While a change from the store is applied: the revision its events carry.
    emit_at: Option<u64>,
}

impl Registry {
    /// Loads the durable state. Nodes start unhealthy until their next heartbeat. On a store
    /// of its own, every lease is re-armed for its full TTL from now, since its holder may have
    /// renewed it while this master was down (renewals are not written there); a shared store
    /// holds every renewal.
    pub fn open(
        mut store: Box<dyn Store>,
        heartbeat_interval: Duration,
    ) -> Result<Self, StoreError> {
        let shared = store.shared();
        let load = store.load_shared()?;
        let clock = match store.now_ms()? {
            Some(db_now) => Clock::starting_at(db_now),
            None => Clock::new(),
        };
        let now = clock.now_ms();
        let snap = load.snapshot;
        let mut inner = Inner {
            tasks: BTreeMap::new(),
            domains: HashMap::new(),
            nodes: BTreeMap::new(),
            leases: BTreeMap::new(),
            acme: snap.acme.into_iter().map(|r| (r.key(), r)).collect(),
            acme_account: snap.acme_account,
            statuses: HashMap::new(),
            events: HashMap::new(),
            next_token: snap.next_token.max(1),
            revision: load.head,
            log: VecDeque::new(),
            log_floor: load.head,
            emit_at: None,
        };
        for t in snap.tasks {
            for d in &t.spec.domains {
                inner.domains.insert(d.clone(), t.id.clone());
            }
            inner.tasks.insert(t.id.clone(), t);
        }
        let mut live: HashMap<_, _> = load.live.into_iter().collect();
        for reg in snap.nodes {
            let l = live.remove(&reg.id);
            let entry = NodeEntry {
                running: l.as_ref().map(|l| l.running.clone()).unwrap_or_default(),
                load: l.as_ref().map_or(0.0, |l| l.load),
                last_heartbeat_ms: l.as_ref().map(|l| l.at_ms),
                healthy: l.is_some_and(|l| l.healthy),
                reg,
            };
            inner.nodes.insert(entry.reg.id.clone(), entry);
        }
        for mut l in snap.leases {
            if !shared {
                let ttl = if l.ttl_ms > 0 {
                    l.ttl_ms
                } else {
                    // Written before leases stored their TTL: the longest they could have had.
                    l.expires_at.saturating_sub(l.granted_at).min(MAX_TTL_MS)
                };
                l.expires_at = l.expires_at.max(now + ttl);
            }
            inner.leases.insert(l.task_id.clone(), l);
        }
        for st in load.statuses {
            status::record(&mut inner, st);
        }
        let (revision_tx, _) = tokio::sync::watch::channel(load.head);
        Ok(Self {
            store: StoreThread::spawn(store)?,
            writer: tokio::sync::Mutex::new(()),
            inner: Mutex::new(inner),
            clock,
            epoch: if shared {
                load.cluster
            } else {
                uuid::Uuid::new_v4().simple().to_string()
            },
            shared,
            heartbeat_interval,
            lease_grace_ms: DEFAULT_LEASE_GRACE.as_millis() as u64,
            revision_tx,
            closing: tokio::sync::watch::channel(false).0,
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

    /// One durable change: `plan` decides under the lock what to write (no I/O there), the
    /// store's thread writes it with no lock held, and `apply` updates memory under the lock.
    /// Durable changes are serialized, so what `plan` checked still holds at `apply`.
    ///
    /// On a shared store, the first try is optimistic: the store refuses the write if another
    /// master wrote since this one last read the log. Then the next try takes the store's write
    /// lock first, reads what changed, and decides under it, so a master cannot lose the race
    /// forever to a busy neighbour.
    async fn change<P: Send + 'static, T>(
        &self,
        mut plan: impl FnMut(&mut Inner) -> Result<P, RegistryError>,
        write: impl Fn(&mut dyn Store, &P) -> Result<(), StoreError> + Send + Sync + 'static,
        apply: impl FnOnce(&mut Inner, P) -> T,
    ) -> Result<T, RegistryError> {
        let write = Arc::new(write);
        let mut attempt = 0;
        let mut lock_first = false;
        loop {
            let _one = self.writer.lock().await;
            // Declared after `_one`, so dropped before it: a write abandoned half-way is rolled
            // back before the next change may start one.
            let mut open_write = None;
            if lock_first {
                open_write = Some(OpenWrite(&self.store));
                let from = self.lock().revision;
                let changes = self
                    .store
                    .run(move |s| {
                        s.begin(None)?;
                        s.changes_since(from)
                    })
                    .await?;
                match changes {
                    Some(changes) => {
                        let mut g = self.lock();
                        for c in changes {
                            self.apply_change(&mut g, c);
                        }
                    }
                    None => {
                        drop(open_write.take());
                        self.reload().await?;
                        continue;
                    }
                }
            }
            let (planned, expect) = {
                let mut g = self.lock();
                (plan(&mut g)?, g.revision)
            };
            let write = write.clone();
            let written = self
                .store
                .run(move |s| {
                    if !lock_first {
                        return write_shared(s, Some(expect), |s| {
                            write(s, &planned).map(|()| planned)
                        });
                    }
                    match write(s, &planned).and_then(|()| s.commit()) {
                        Ok(head) => Ok((planned, head)),
                        Err(e) => {
                            s.rollback();
                            Err(e)
                        }
                    }
                })
                .await;
            if let Some(w) = open_write.take() {
                // The job ran: committed or rolled back.
                std::mem::forget(w);
            }
            match written {
                Ok((planned, head)) => {
                    let mut g = self.lock();
                    if !self.shared {
                        return Ok(apply(&mut g, planned));
                    }
                    g.emit_at = Some(head);
                    let out = apply(&mut g, planned);
                    g.emit_at = None;
                    g.revision = head;
                    self.revision_tx.send_replace(head);
                    return Ok(out);
                }
                Err(StoreError::Stale) if attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    lock_first = true;
                }
                // A lease renewed through another master (renewals are not in the log).
                Err(StoreError::LeaseMoved(task)) if attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    lock_first = true;
                    self.refresh_leases(Some(vec![task])).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
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
        self.revision = self.emit_at.unwrap_or(self.revision + 1);
        self.log.push_back((self.revision, ev));
        if self.log.len() > LOG_LEN {
            if let Some((r, _)) = self.log.pop_front() {
                self.log_floor = r;
            }
        }
        tx.send_replace(self.revision);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{mpsc, Arc, Mutex},
        time::Duration,
    };

    use shadow_common::{
        acme::AcmeRecord,
        lease::{Lease, LeaseRequest},
        node::{Heartbeat, NodeRegistration},
        task::{Task, TaskSpec},
    };

    use super::Registry;
    use crate::store::{sqlite::SqliteStore, Snapshot, Store, StoreError};

    /// SQLite whose task writes wait until the test lets them go: a disk that stalls.
    struct Stalling {
        inner: SqliteStore,
        entered: mpsc::Sender<()>,
        go: Mutex<mpsc::Receiver<()>>,
    }

    impl Store for Stalling {
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            self.inner.load()
        }
        fn put_task(&mut self, task: &Task) -> Result<(), StoreError> {
            let _ = self.entered.send(());
            let _ = self.go.lock().expect("gate").recv();
            self.inner.put_task(task)
        }
        fn delete_task(&mut self, id: &str) -> Result<(), StoreError> {
            self.inner.delete_task(id)
        }
        fn put_node(&mut self, node: &NodeRegistration) -> Result<(), StoreError> {
            self.inner.put_node(node)
        }
        fn delete_node(&mut self, id: &str) -> Result<(), StoreError> {
            self.inner.delete_node(id)
        }
        fn put_lease(&mut self, lease: &Lease, next: u64) -> Result<(), StoreError> {
            self.inner.put_lease(lease, next)
        }
        fn delete_lease(&mut self, task_id: &str) -> Result<(), StoreError> {
            self.inner.delete_lease(task_id)
        }
        fn put_acme(&mut self, r: &AcmeRecord) -> Result<(), StoreError> {
            self.inner.put_acme(r)
        }
        fn delete_acme(&mut self, key: &str) -> Result<(), StoreError> {
            self.inner.delete_acme(key)
        }
        fn put_acme_account(&mut self, c: &serde_json::Value) -> Result<(), StoreError> {
            self.inner.put_acme_account(c)
        }
        fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
            self.inner.snapshot()
        }
        fn import(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
            self.inner.import(snap)
        }
    }

    #[tokio::test]
    async fn a_stalled_disk_holds_only_the_change_being_written() {
        let dir = tempfile::tempdir().expect("dir");
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let store = Stalling {
            inner: SqliteStore::open(dir.path()).expect("store"),
            entered: entered_tx,
            go: Mutex::new(go_rx),
        };
        let reg = Arc::new(Registry::open(Box::new(store), Duration::from_secs(1)).expect("open"));
        reg.register_node(NodeRegistration {
            id: "a".into(),
            address: "127.0.0.1:7071".into(),
            capacity: 1,
            volume_kinds: None,
        })
        .await
        .expect("node");
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "slow", "domains": ["slow.test"], "image": "x"
        }))
        .expect("spec");
        let writer = reg.clone();
        let create = tokio::spawn(async move { writer.create_task(spec).await });
        tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
            .await
            .expect("join")
            .expect("the write reached the store");

        // The disk is stuck in that write; reads, heartbeats and the watch go on, on a
        // blocking thread so a held lock fails the test instead of hanging it.
        let reader = reg.clone();
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || {
                let hb = Heartbeat {
                    running: vec![],
                    load: 0.5,
                };
                tokio::runtime::Handle::current()
                    .block_on(reader.heartbeat("a", hb))
                    .expect("heartbeat");
                (reader.list_tasks().len(), reader.list_nodes().len())
            }),
        )
        .await
        .expect("answered while the disk was stuck")
        .expect("join");
        assert_eq!(
            answered,
            (0, 1),
            "the task is not there before it is stored"
        );
        assert!(!create.is_finished(), "the create waits for its write");
        // A second durable change waits its turn; the first completes once the disk moves.
        go.send(()).expect("release");
        let task = create.await.expect("join").expect("created");
        assert_eq!(reg.list_tasks()[0].id, task.id);
        let lease = reg
            .acquire_lease(
                &task.id,
                LeaseRequest {
                    node: "a".into(),
                    ttl_ms: 1_000,
                },
            )
            .await
            .expect("grant after the stall");
        assert_eq!(lease.token, 1);
    }
}
