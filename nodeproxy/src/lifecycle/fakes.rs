//! In-memory stand-ins for the life cycle's I/O seams: a container runtime, a volume backend, the
//! master's lease calls and fence check. Every call is recorded and takes virtual time only, so
//! the state machine runs under a paused clock, deterministically.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_trait::async_trait;
use shadow_common::{
    client::{ClientError, MasterClient},
    follower::{Feed, Follower},
    lease::{LeaseGrant, LostLease, RenewedLease, SessionRenewal, SessionRenewed},
    task::{Task, TaskSpec, VolumeKind},
    watch::WatchEvent,
};
use tokio::sync::Notify;

use super::{apps::Apps, context::AppContext};
use crate::{
    budget::MemoryBudget,
    config::NodeConfig,
    lease::{LeaseApi, LeaseSession, LeaseTiming},
    runtime::{
        ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStats, ContainerStatus,
        OutputLine, RunningContainer, RuntimeError,
    },
    volume::{Attached, Fence, FenceCheck, FenceError, VolumeBackend, VolumeError, Volumes},
};

/// One thing a fake was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Create(String),
    Pause(String),
    Unpause(String),
    /// The container, and whether it was given a grace period (a graceful stop, not a kill).
    Remove(String, bool),
    Attach(String),
    Checkpoint(String),
    Detach(String),
    Abandon(String),
    Release(String),
}

#[derive(Default)]
pub struct Journal(Mutex<Vec<Call>>);

impl Journal {
    fn push(&self, c: Call) {
        self.0.lock().unwrap().push(c);
    }
    pub fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.all().iter().filter(|c| f(c)).count()
    }
}

struct Container {
    name: String,
    labels: BTreeMap<String, String>,
    paused: bool,
}

/// A container runtime that keeps its containers in a map. A create takes `start_delay` of
/// virtual time; the app answers probes once `ready` is set (it is by default).
pub struct FakeRuntime {
    journal: Arc<Journal>,
    containers: Mutex<HashMap<String, Container>>,
    seq: AtomicU64,
    pub start_delay: Mutex<Duration>,
    /// How long a graceful stop takes.
    pub stop_delay: Mutex<Duration>,
    /// The next creates fail with this message.
    pub fail_create: Mutex<Option<String>>,
    pub ready: AtomicBool,
    /// Creates wait for this when `hold_create` is set.
    pub create_gate: Notify,
    pub hold_create: AtomicBool,
    /// CPU time each stats call adds (a busy app).
    pub cpu_per_stats_ns: AtomicU64,
    cpu_ns: AtomicU64,
}

impl FakeRuntime {
    pub fn new(journal: Arc<Journal>) -> Arc<Self> {
        Arc::new(Self {
            journal,
            containers: Mutex::default(),
            seq: AtomicU64::new(0),
            start_delay: Mutex::new(Duration::from_millis(100)),
            stop_delay: Mutex::new(Duration::ZERO),
            fail_create: Mutex::new(None),
            ready: AtomicBool::new(true),
            create_gate: Notify::new(),
            hold_create: AtomicBool::new(false),
            cpu_per_stats_ns: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
        })
    }

    /// The containers that exist, and whether each is paused.
    pub fn containers(&self) -> Vec<(String, bool)> {
        let mut v: Vec<_> = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .map(|(id, c)| (id.clone(), c.paused))
            .collect();
        v.sort();
        v
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ensure_image(&self, _image: &str, _always: bool) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
    ) -> Result<RunningContainer, RuntimeError> {
        if self.hold_create.load(Ordering::SeqCst) {
            self.create_gate.notified().await;
        }
        let delay = *self.start_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if let Some(message) = self.fail_create.lock().unwrap().clone() {
            return Err(RuntimeError::Docker {
                action: "start the container".into(),
                message,
            });
        }
        let n = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("c{n}");
        self.journal.push(Call::Create(id.clone()));
        self.containers.lock().unwrap().insert(
            id.clone(),
            Container {
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                paused: false,
            },
        );
        Ok(RunningContainer {
            id,
            name: spec.name.clone(),
            host_addr: SocketAddr::from(([127, 0, 0, 1], 40000 + n as u16)),
            image_digest: None,
        })
    }

    async fn ensure_built(&self, _tag: &str, _context: Vec<u8>) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn ensure_network(&self, name: &str) -> Result<String, RuntimeError> {
        Ok(name.to_owned())
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.journal
            .push(Call::Remove(id.to_owned(), !grace.is_zero()));
        if !grace.is_zero() {
            let delay = *self.stop_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
        }
        self.containers.lock().unwrap().remove(id);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.journal.push(Call::Pause(id.to_owned()));
        match self.containers.lock().unwrap().get_mut(id) {
            Some(c) => {
                c.paused = true;
                Ok(())
            }
            None => Err(RuntimeError::NotFound { id: id.to_owned() }),
        }
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        self.journal.push(Call::Unpause(id.to_owned()));
        match self.containers.lock().unwrap().get_mut(id) {
            Some(c) => {
                c.paused = false;
                Ok(())
            }
            None => Err(RuntimeError::NotFound { id: id.to_owned() }),
        }
    }

    async fn list_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.labels.get(key).map(String::as_str) == Some(value))
            .map(|(id, c)| ContainerInfo {
                id: id.clone(),
                name: c.name.clone(),
                labels: c.labels.clone(),
                running: true,
                host_addr: None,
            })
            .collect())
    }

    async fn logs_tail(&self, _id: &str, _lines: usize) -> Result<String, RuntimeError> {
        Ok(String::new())
    }

    async fn follow_logs(
        &self,
        _id: &str,
        _sink: tokio::sync::mpsc::Sender<OutputLine>,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn stats(&self, _id: &str) -> Result<ContainerStats, RuntimeError> {
        let add = self.cpu_per_stats_ns.load(Ordering::SeqCst);
        Ok(ContainerStats {
            cpu_ns: self.cpu_ns.fetch_add(add, Ordering::SeqCst) + add,
            ..ContainerStats::default()
        })
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerStatus>, RuntimeError> {
        Ok(self
            .containers
            .lock()
            .unwrap()
            .get(id)
            .map(|_| ContainerStatus {
                running: true,
                status: "running".into(),
                exit_code: None,
                oom_killed: false,
                pid: None,
            }))
    }

    async fn probe(&self, _addr: SocketAddr, _path: Option<&str>, _timeout: Duration) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// A volume backend that only records what it was asked; `fail_checkpoint` makes checkpoints
/// fail.
pub struct FakeVolume {
    journal: Arc<Journal>,
    dir: PathBuf,
    pub fail_checkpoint: AtomicBool,
}

#[async_trait]
impl VolumeBackend for FakeVolume {
    async fn attach(&self, task: &Task, _fence: &Fence) -> Result<Attached, VolumeError> {
        self.journal.push(Call::Attach(task.id.clone()));
        Ok(Attached::dir(self.dir.join(&task.id)))
    }

    async fn checkpoint(
        &self,
        task: &Task,
        _attached: &Attached,
        _fence: &Fence,
    ) -> Result<(), VolumeError> {
        if self.fail_checkpoint.load(Ordering::SeqCst) {
            return Err(VolumeError::Unavailable {
                task: task.id.clone(),
                message: "the store is down".into(),
            });
        }
        self.journal.push(Call::Checkpoint(task.id.clone()));
        Ok(())
    }

    async fn abandon(&self, task: &Task, _attached: &Attached) -> Result<(), VolumeError> {
        self.journal.push(Call::Abandon(task.id.clone()));
        Ok(())
    }

    async fn detach(
        &self,
        task: &Task,
        _attached: &Attached,
        _fence: &Fence,
    ) -> Result<(), VolumeError> {
        self.journal.push(Call::Detach(task.id.clone()));
        Ok(())
    }
}

/// The master's lease calls: grants every lease, renews them all until `lose` is set, then
/// answers that every lease is lost.
pub struct FakeLeases {
    journal: Arc<Journal>,
    token: AtomicU64,
    pub lose: AtomicBool,
}

#[async_trait]
impl LeaseApi for FakeLeases {
    async fn acquire(
        &self,
        _task_id: &str,
        _node: &str,
        _ttl: Duration,
    ) -> Result<LeaseGrant, ClientError> {
        Ok(LeaseGrant {
            token: self.token.fetch_add(1, Ordering::SeqCst) + 1,
            expires_at: 0,
        })
    }

    async fn renew_session(
        &self,
        _node: &str,
        req: &SessionRenewal,
    ) -> Result<SessionRenewed, ClientError> {
        let lose = self.lose.load(Ordering::SeqCst);
        let (renewed, lost) = if lose {
            let lost = req
                .leases
                .iter()
                .map(|l| LostLease {
                    task_id: l.task_id.clone(),
                    token: l.token,
                    error: "the lease was granted to another node".into(),
                })
                .collect();
            (vec![], lost)
        } else {
            let renewed = req
                .leases
                .iter()
                .map(|l| RenewedLease {
                    task_id: l.task_id.clone(),
                    token: l.token,
                    expires_at: 0,
                })
                .collect();
            (renewed, vec![])
        };
        Ok(SessionRenewed { renewed, lost })
    }

    async fn release(&self, task_id: &str, _token: u64) -> Result<(), ClientError> {
        self.journal.push(Call::Release(task_id.to_owned()));
        Ok(())
    }
}

struct AlwaysCurrent;

#[async_trait]
impl FenceCheck for AlwaysCurrent {
    async fn still_current(&self, _task_id: &str, _token: u64) -> Result<(), FenceError> {
        Ok(())
    }
}

/// A node's apps on the fakes, with a handle on each.
pub struct Node {
    pub apps: Arc<Apps>,
    pub runtime: Arc<FakeRuntime>,
    pub volume: Arc<FakeVolume>,
    pub leases: Arc<FakeLeases>,
    pub journal: Arc<Journal>,
    pub ctx: Arc<AppContext>,
    pub feed: Feed,
    _dir: tempfile::TempDir,
}

/// Lease TTL of the fake node: renewed every 2.5 s.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

impl Node {
    /// A node with `memory_mb` of budget; `config` may change its defaults.
    pub fn new(memory_mb: u64, config: impl FnOnce(&mut NodeConfig)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::default());
        let runtime = FakeRuntime::new(journal.clone());
        let volume = Arc::new(FakeVolume {
            journal: journal.clone(),
            dir: dir.path().join("volumes"),
            fail_checkpoint: AtomicBool::new(false),
        });
        let leases = Arc::new(FakeLeases {
            journal: journal.clone(),
            token: AtomicU64::new(0),
            lose: AtomicBool::new(false),
        });
        let mut cfg = NodeConfig::new("n1", "http://127.0.0.1:9", dir.path().to_owned());
        cfg.memory_budget_mb = memory_mb;
        // The busy check asks for stats; tests that want it turn it back on.
        cfg.busy_cpu_percent = 0.0;
        cfg.checkpoint_interval_s = 0;
        config(&mut cfg);
        let session = LeaseSession::new(
            leases.clone(),
            "n1".into(),
            LeaseTiming::new(LEASE_TTL, Duration::from_secs(1)),
        );
        tokio::spawn(session.clone().run());
        let (follower, feed) = Follower::local();
        let rt: Arc<dyn ContainerRuntime> = runtime.clone();
        let ctx = Arc::new(AppContext {
            budget: MemoryBudget::new(memory_mb),
            runtime: rt.clone(),
            volumes: Volumes {
                s3: Some(volume.clone()),
                ..Volumes::default()
            },
            metrics: crate::metrics::Metrics::new(),
            leases: session,
            follower,
            fence_check: Arc::new(AlwaysCurrent),
            master: MasterClient::new("http://127.0.0.1:9", None),
            status: crate::status::StatusBoard::new("n1"),
            logs: crate::logs::LogStore::new(dir.path(), 1 << 20),
            usage: crate::usage::UsageMeter::new("n1", rt.clone()),
            sandboxes: super::sandbox::SandboxPool::off(rt, crate::metrics::Metrics::new()),
            config: Arc::new(cfg),
        });
        Node {
            apps: Apps::new(ctx.clone()),
            runtime,
            volume,
            leases,
            journal,
            ctx,
            feed,
            _dir: dir,
        }
    }

    /// Puts `task` on the fake master, as its watch would.
    pub fn publish(&self, task: &Arc<Task>) {
        self.feed.apply(&WatchEvent::TaskPut {
            task: Box::new((**task).clone()),
        });
    }
}

/// A task with `memory_mb` of memory, stateful (`s3`) or not; idle after 60 s.
pub fn task(id: &str, memory_mb: u64, stateful: bool) -> Arc<Task> {
    let mut spec: TaskSpec = serde_json::from_value(
        serde_json::json!({"name": id, "domains": [format!("{id}.test")], "image": "app"}),
    )
    .unwrap();
    spec.idle_timeout_s = 60;
    spec.resources.memory_mb = Some(memory_mb);
    if stateful {
        spec.volume.kind = VolumeKind::S3;
    }
    Arc::new(Task {
        id: id.to_owned(),
        spec,
    })
}
