//! The durable state seam: what the master must not forget across a restart.
//!
//! The master keeps its working state in memory ([`crate::registry`]) and writes every change
//! through a [`Store`] first, so a failed write changes nothing. The store runs on a thread of
//! its own ([`StoreThread`]): no write blocks an async worker or holds the registry's lock. SQLite ([`sqlite`]) is the
//! embedded default; PostgreSQL ([`postgres`]) serves operators who run their database
//! elsewhere (`SHADOW_DATABASE_URL`).

mod pg_connect;
pub mod postgres;
pub mod sqlite;
pub mod transfer;

use std::collections::BTreeMap;

use shadow_common::{
    acme::AcmeRecord, lease::Lease, node::NodeRegistration, status::AppStatus, task::Task,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database error: {0}; check the data dir's disk space and permissions")]
    Db(String),
    #[error("state database holds a record this master cannot read ({0}); was it written by a newer version?")]
    Corrupt(String),
    /// Another master changed the shared state since this one last read it: catch up, decide
    /// again. Never reaches a client unless masters keep racing (then it is a 503).
    #[error("another master changed the state at the same moment; try again")]
    Stale,
    /// The task's stored lease is not the one the writer decided on (renewed through another
    /// master): read it, decide again.
    #[error("another master renewed the lease of task {0} at the same moment; try again")]
    LeaseMoved(String),
}

/// What a node last told one of the masters: shared between masters on PostgreSQL, so every
/// master judges its health alike.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLive {
    pub running: Vec<String>,
    pub load: f64,
    pub healthy: bool,
    /// The last heartbeat (unix ms, the database's clock).
    pub at_ms: u64,
}

/// A record as it is now, named by an entry of a shared store's change log.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    Task {
        id: String,
        now: Option<Task>,
    },
    Node {
        id: String,
        reg: Option<NodeRegistration>,
        live: Option<NodeLive>,
    },
    Lease {
        task_id: String,
        now: Option<Lease>,
        /// Dropped because it lapsed (not released).
        lapsed: bool,
        next_token: u64,
    },
    Acme {
        key: String,
        now: Option<AcmeRecord>,
    },
    AcmeAccount(Option<serde_json::Value>),
    Status {
        task: String,
        node: String,
        now: Option<AppStatus>,
    },
}

/// One entry of the change log, at its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: u64,
    pub what: Changed,
}

/// Everything a master sharing its store loads at start.
#[derive(Debug, Default)]
pub struct SharedLoad {
    pub snapshot: Snapshot,
    pub live: Vec<(String, NodeLive)>,
    pub statuses: Vec<AppStatus>,
    /// The change log's head: the revision `snapshot` is at.
    pub head: u64,
    /// Names the fleet (the watch's epoch): the same on every master of one database.
    pub cluster: String,
}

/// Everything loaded at start-up (and what `shadow-master export` writes).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub tasks: Vec<Task>,
    pub nodes: Vec<NodeRegistration>,
    pub leases: Vec<Lease>,
    /// The next fencing token to grant; never goes down.
    pub next_token: u64,
    /// Certificates, challenges and ordering statuses (see `shadow_common::acme`).
    pub acme: Vec<AcmeRecord>,
    /// The ACME account's credentials, as the ordering edge gave them.
    pub acme_account: Option<serde_json::Value>,
}

/// Durable storage of tasks, nodes, leases and the fencing generation.
///
/// Calls are synchronous and short; the registry serializes them.
pub trait Store: Send {
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    fn put_task(&mut self, task: &Task) -> Result<(), StoreError>;
    fn delete_task(&mut self, id: &str) -> Result<(), StoreError>;
    fn put_node(&mut self, node: &NodeRegistration) -> Result<(), StoreError>;
    fn delete_node(&mut self, id: &str) -> Result<(), StoreError>;
    /// Stores a granted lease and the next token in one transaction. Renewals are not written:
    /// a restarted master re-arms every lease it loads for a full TTL (see `docs/leases.md`).
    fn put_lease(&mut self, lease: &Lease, next_token: u64) -> Result<(), StoreError>;
    fn delete_lease(&mut self, task_id: &str) -> Result<(), StoreError>;
    fn put_acme(&mut self, record: &AcmeRecord) -> Result<(), StoreError>;
    fn delete_acme(&mut self, key: &str) -> Result<(), StoreError>;
    fn put_acme_account(&mut self, credentials: &serde_json::Value) -> Result<(), StoreError>;
    /// Everything, read consistently while a master may be writing (for an export).
    fn snapshot(&mut self) -> Result<Snapshot, StoreError>;
    /// Writes a whole snapshot into this (empty) store in one transaction (an import).
    fn import(&mut self, snap: &Snapshot) -> Result<(), StoreError>;

    // Below: what several masters sharing one store need. The defaults are a store that one
    // master owns alone (SQLite), where memory is the truth and none of it is needed.

    /// Whether several masters may share this store. Then every write is one transaction
    /// between [`Store::begin`] and [`Store::commit`] that appends to a change log the other
    /// masters follow ([`Store::changes_since`]).
    fn shared(&self) -> bool {
        false
    }
    /// Everything, with the live state and the change log's head (shared stores).
    fn load_shared(&mut self) -> Result<SharedLoad, StoreError> {
        Ok(SharedLoad {
            snapshot: self.load()?,
            ..SharedLoad::default()
        })
    }
    /// Starts a write, serialized with every other master's. With `expect`, fails with
    /// [`StoreError::Stale`] unless the change log's head is still `expect`: the writer decided
    /// on memory that is up to date.
    fn begin(&mut self, _expect: Option<u64>) -> Result<(), StoreError> {
        Ok(())
    }
    /// Commits what [`Store::begin`] started and answers the change log's new head.
    fn commit(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn rollback(&mut self) {}
    /// The log's entries after `revision`, each with its record as it is now; `None` when
    /// entries after `revision` were pruned (reload everything).
    fn changes_since(&mut self, _revision: u64) -> Result<Option<Vec<Change>>, StoreError> {
        Ok(Some(vec![]))
    }
    /// Grants `lease` if the stored lease of its task is still `seen` (what the granting master
    /// decided on; none): another master may have renewed it meanwhile, which only the stored
    /// row shows (renewals are not in the change log). Else [`StoreError::LeaseMoved`].
    fn grant_lease(
        &mut self,
        lease: &Lease,
        next_token: u64,
        _seen: Option<&Lease>,
    ) -> Result<(), StoreError> {
        self.put_lease(lease, next_token)
    }
    /// Drops a lapsed lease if it is still stored as `seen` (not renewed through another master
    /// meanwhile; else [`StoreError::LeaseMoved`]); followers announce it as lapsed.
    fn lapse_lease(&mut self, seen: &Lease) -> Result<(), StoreError> {
        self.delete_lease(&seen.task_id)
    }
    /// The leases of these tasks as stored.
    fn leases_of(&mut self, _task_ids: &[String]) -> Result<BTreeMap<String, Lease>, StoreError> {
        Ok(BTreeMap::new())
    }
    /// Every stored lease.
    fn all_leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        Ok(vec![])
    }
    /// Renews the task's lease to `now + ttl_ms` if it is held with `token` (by `node`, when
    /// named) and has not expired at `now`: one atomic update, outside any write (a renewal
    /// changes nothing another master acts on, so it is not in the change log). Answers the new
    /// expiry, or `None` when the lease was not renewable.
    fn renew_lease_if_live(
        &mut self,
        _task_id: &str,
        _token: u64,
        _node: Option<&str>,
        _ttl_ms: u64,
        _now: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Stores what a node told a master and announces it.
    fn put_node_live(&mut self, _id: &str, _live: &NodeLive) -> Result<(), StoreError> {
        Ok(())
    }
    /// Records a heartbeat that changed nothing else (not announced; outside any write).
    fn touch_node(&mut self, _id: &str, _at_ms: u64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Every node's last heartbeat (unix ms).
    fn node_heartbeats(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(vec![])
    }
    /// Stores an app's status; `announce` adds it to the change log (a change of state).
    fn put_app_status(&mut self, _status: &AppStatus, _announce: bool) -> Result<(), StoreError> {
        Ok(())
    }
    /// The store's clock (unix ms), which shared masters use for lease times.
    fn now_ms(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Forgets change-log entries but the newest `keep`.
    fn prune(&mut self, _keep: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Runs `f` as one write of a shared store (see [`Store::begin`]); on a store of one master,
/// just runs it.
pub fn write_shared<T>(
    s: &mut dyn Store,
    expect: Option<u64>,
    f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError>,
) -> Result<(T, u64), StoreError> {
    if !s.shared() {
        return f(s).map(|t| (t, 0));
    }
    s.begin(expect)?;
    match f(s).and_then(|t| s.commit().map(|head| (t, head))) {
        Ok(done) => Ok(done),
        Err(e) => {
            s.rollback();
            Err(e)
        }
    }
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A store owned by its own thread (the registry's [`Store`], the usage store): callers await
/// their calls without blocking an async worker, and a client library that runs its own
/// runtime (PostgreSQL's) is never entered or dropped on one.
pub struct StoreThread<S: ?Sized + Send + 'static> {
    jobs: std::sync::mpsc::Sender<Job<S>>,
}

impl<S: ?Sized + Send + 'static> StoreThread<S> {
    /// Moves `store` to a new thread, which ends when this handle is dropped.
    pub fn spawn(mut store: Box<S>) -> Result<Self, StoreError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job<S>>();
        std::thread::Builder::new()
            .name("shadow-store".into())
            .spawn(move || {
                for job in rx {
                    job(&mut *store);
                }
            })
            .map_err(|e| StoreError::Db(format!("cannot start the store's thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Queues `f` on the store's thread without waiting for it (clean-up from a `Drop`).
    pub fn send(&self, f: impl FnOnce(&mut S) + Send + 'static) {
        let _ = self.jobs.send(Box::new(f));
    }

    /// Runs `f` on the store's thread and answers its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || StoreError::Db("the store's thread has ended".into());
        self.jobs
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
