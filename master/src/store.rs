//! The durable state seam: what the master must not forget across a restart.
//!
//! The master keeps its working state in memory ([`crate::registry`]) and writes every change
//! through a [`Store`] first, so a failed write changes nothing. The store runs on a thread of
//! its own ([`StoreThread`]): no write blocks an async worker or holds the registry's lock. SQLite ([`sqlite`]) is the
//! embedded default; PostgreSQL ([`postgres`]) serves operators who run their database
//! elsewhere (`SHADOW_DATABASE_URL`).

pub mod postgres;
pub mod sqlite;
pub mod transfer;

use shadow_common::{acme::AcmeRecord, lease::Lease, node::NodeRegistration, task::Task};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database error: {0}; check the data dir's disk space and permissions")]
    Db(String),
    #[error("state database holds a record this master cannot read ({0}); was it written by a newer version?")]
    Corrupt(String),
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
