//! A cold start, phase by phase: lease, volume, image, container, ready.
//!
//! Each phase records what it made in a [`Partial`], so a failed or timed-out start is undone
//! completely by [`clean_up`]: no container left, volume detached, lease released.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use shadow_common::{
    backoff::Backoff,
    client::ClientError,
    state::ClusterState,
    status::StartPhase,
    task::{Task, DATA_MOUNT},
};
use tokio::{sync::Notify, time::Instant};

use super::{
    activity::Activity,
    context::AppContext,
    error::StartError,
    keepalive::{under_lease, RanOut},
    ready,
};
use crate::{
    lease::{AcquireError, Held},
    runtime::{ContainerSpec, RunningContainer},
    volume::{Attached, VolumeBackend},
};

/// Container labels: which node made it, for which task. A node touches only its own.
pub const LABEL_NODE: &str = "shadow.node";
pub const LABEL_TASK: &str = "shadow.task";

/// What a start has made so far, for undoing it.
#[derive(Default)]
pub struct Partial {
    pub lease: Option<Arc<Held>>,
    pub volume: Option<(Arc<dyn VolumeBackend>, Attached)>,
    /// Set before the create call, so a start cut off mid-create still removes it by name.
    pub container: Option<String>,
    /// The sandbox the container was to join, removed with it.
    pub sandbox: Option<crate::runtime::Sandbox>,
}

/// A running app.
pub struct Running {
    pub task: Arc<Task>,
    pub container: RunningContainer,
    pub activity: Arc<Activity>,
    /// The task's lease, for stateful tasks.
    pub lease: Option<Arc<Held>>,
    pub volume: Option<(Arc<dyn VolumeBackend>, Attached)>,
    /// The sandbox it runs in, removed when it stops.
    pub sandbox: Option<crate::runtime::Sandbox>,
    /// Signalled when a request brings a changed spec: stop, so the next start uses it.
    pub replaced: Notify,
    /// Signalled when someone asks the app to sleep now (`shadow apps sleep`).
    pub put_to_sleep: Notify,
    /// Signalled when a request finds the app frozen: thaw it.
    pub thaw: Notify,
    /// Signalled when a start needs the frozen app's memory: stop it.
    pub evict: Notify,
    /// The app's share of the node's memory budget, given back when the app has stopped.
    pub memory: Mutex<Option<crate::budget::Reservation>>,
}

impl Running {
    /// Gives the app's memory back to the node's budget (its container is gone).
    pub fn release_memory(&self) {
        drop(self.memory.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The MiB of the node's budget the app holds.
    pub fn memory_mb(&self) -> u64 {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, crate::budget::Reservation::mb)
    }
}

/// Makes container names unique across starts and node restarts.
static SEQ: AtomicU64 = AtomicU64::new(0);

fn container_name(task: &Task) -> String {
    if SEQ.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let _ = SEQ.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    // The app's name first, for people reading `docker ps`; Docker allows [a-zA-Z0-9_.-].
    let name: String = task
        .spec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    let name = name.trim_matches('-');
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    if name.is_empty() {
        format!("shadow-{}-{seq}", task.id)
    } else {
        format!("shadow-{name}-{}-{seq}", task.id)
    }
}

fn record<T>(partial: &Mutex<Partial>, f: impl FnOnce(&mut Partial) -> T) -> T {
    f(&mut partial.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Starts the app, holding `memory` of the node's budget for it. `holder_down` names a node the
/// edge could not reach: if that node holds the lease, the start waits for the lease to lapse
/// instead of sending the request there.
pub async fn start(
    ctx: &AppContext,
    task: &Arc<Task>,
    partial: &Mutex<Partial>,
    holder_down: Option<&str>,
    memory: crate::budget::Reservation,
) -> Result<Running, StartError> {
    let began = Instant::now();
    let mut lease = None;
    ctx.status.phase(&task.id, StartPhase::Lease);
    if task.spec.volume.kind.is_stateful() {
        let held = Arc::new(take_lease(ctx, task, holder_down).await?);
        record(partial, |p| p.lease = Some(held.clone()));
        lease = Some(held);
    }
    ctx.metrics.phase("lease", began.elapsed());

    // The session renews the lease meanwhile (attaching a large volume, pulling an image or a
    // slow readiness can each outlast it); if it runs out, the start ends and its clean-up kills
    // whatever was started.
    let fence = ctx.fence(lease.as_deref());
    let container = under_lease(lease.as_deref(), bring_up(ctx, task, partial, &fence))
        .await
        .map_err(|RanOut| StartError::LeaseLost)??;
    tracing::info!(
        task = %task.id,
        container = %container.name,
        addr = %container.host_addr,
        ms = began.elapsed().as_millis() as u64,
        "app started"
    );

    let (volume, sandbox) = record(partial, |p| {
        // The start succeeded: the running app owns these now, not the clean-up.
        p.lease = None;
        p.container = None;
        (p.volume.take(), p.sandbox.take())
    });
    Ok(Running {
        task: task.clone(),
        container,
        activity: Activity::new(),
        lease,
        volume,
        sandbox,
        replaced: Notify::new(),
        put_to_sleep: Notify::new(),
        thaw: Notify::new(),
        evict: Notify::new(),
        memory: Mutex::new(Some(memory)),
    })
}

/// What a start is waiting for, so each wait is logged once rather than per attempt.
#[derive(PartialEq)]
enum Waiting {
    Master,
    Lapse,
}

/// Takes the task's lease. While the master cannot be reached, tries again with backoff; while
/// `holder_down` holds it, waits for the watch to announce its lapse. Either way the start's own
/// timeout bounds the wait, and concurrent requests share this one attempt.
async fn take_lease(
    ctx: &AppContext,
    task: &Task,
    holder_down: Option<&str>,
) -> Result<Held, StartError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut waiting = None;
    loop {
        let err = match ctx.leases.acquire(&task.id).await {
            Ok(held) => {
                if waiting.is_some() {
                    tracing::info!(task = %task.id, "lease taken after waiting");
                }
                return Ok(held);
            }
            Err(AcquireError::Master(ClientError::LeaseConflict {
                holder: Some(holder),
                ..
            })) => {
                if holder_down != Some(holder.as_str()) {
                    return Err(StartError::LeaseHeld { holder });
                }
                if waiting != Some(Waiting::Lapse) {
                    tracing::info!(task = %task.id, %holder, "the lease is held by a node the edge cannot reach; waiting for it to lapse");
                    waiting = Some(Waiting::Lapse);
                }
                wait_for_lapse(ctx, &task.id, &holder).await;
                continue;
            }
            Err(AcquireError::Master(e)) if !e.is_transient() => return Err(e.into()),
            Err(e) => e,
        };
        if waiting != Some(Waiting::Master) {
            tracing::warn!(task = %task.id, error = %err, "cannot reach the master for the lease; the start waits for it");
            waiting = Some(Waiting::Master);
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Waits until the watch shows `holder`'s lease of the task gone. The watch may not have
/// brought that lease yet: it gets a second to, after which the caller simply asks again.
async fn wait_for_lapse(ctx: &AppContext, task_id: &str, holder: &str) {
    let held = |s: &ClusterState| s.lease(task_id).is_some_and(|l| l.node == holder);
    let _ = tokio::time::timeout(Duration::from_secs(1), ctx.follower.wait_until(held)).await;
    ctx.follower.wait_until(|s| !held(s)).await;
}

/// Volume, image, container, readiness: the steps of a start that run under the lease.
async fn bring_up(
    ctx: &AppContext,
    task: &Arc<Task>,
    partial: &Mutex<Partial>,
    fence: &crate::volume::Fence,
) -> Result<RunningContainer, StartError> {
    let cfg = &ctx.config;
    let t = Instant::now();
    let mut data_mount = None;
    ctx.status.phase(&task.id, StartPhase::Volume);
    if let Some(from) = task.spec.volume.migrating_from {
        super::migrate::migrate(ctx, task, from, fence).await?;
    }
    if let Some(backend) = ctx.volumes.backend(task)? {
        let attached = backend.attach(task, fence).await?;
        data_mount = Some(attached.host_path.clone());
        record(partial, |p| p.volume = Some((backend, attached)));
    }
    ctx.metrics.phase("volume", t.elapsed());

    let t = Instant::now();
    ctx.status.phase(&task.id, StartPhase::Image);
    let always = task.spec.pull == shadow_common::task::PullPolicy::Always;
    ctx.runtime.ensure_image(&task.spec.image, always).await?;
    ctx.metrics.phase("image", t.elapsed());

    let t = Instant::now();
    let mut spec = container_spec(task, &cfg.node_id, data_mount);
    let l = limits(cfg, task);
    (spec.memory_mb, spec.cpus, spec.pids) = (Some(l.memory_mb), Some(l.cpus), Some(l.pids));
    spec.network = Some(cfg.app_network.clone());
    spec.sandbox = ctx.sandboxes.take(task.spec.port);
    record(partial, |p| {
        p.container = Some(spec.name.clone());
        p.sandbox = spec.sandbox.clone();
    });
    ctx.status.phase(&task.id, StartPhase::Container);
    let container = match ctx.runtime.create_and_start(&spec).await {
        Ok(c) => c,
        // A sandbox that died while it waited (killed, out of memory) is not the app's fault:
        // start the app with its own namespace instead.
        Err(e) if spec.sandbox.is_some() => {
            tracing::warn!(task = %task.id, error = %e, "cannot start the app in its sandbox; starting it without one");
            if let Some(sandbox) = record(partial, |p| p.sandbox.take()) {
                ctx.kill(task, &spec.name).await;
                ctx.sandboxes.discard(&sandbox).await;
            }
            spec.sandbox = None;
            ctx.runtime.create_and_start(&spec).await?
        }
        Err(e) => return Err(e.into()),
    };
    record(partial, |p| p.container = Some(container.id.clone()));
    ctx.logs.collect(
        ctx.runtime.clone(),
        task.id.clone(),
        container.id.clone(),
        container.name.clone(),
    );
    ctx.metrics.phase("create_start", t.elapsed());

    let t = Instant::now();
    ctx.status.phase(&task.id, StartPhase::Ready);
    wait_ready(ctx, task, &container).await?;
    ctx.metrics.phase("ready", t.elapsed());
    Ok(container)
}

pub fn container_spec(
    task: &Task,
    node_id: &str,
    data_mount: Option<std::path::PathBuf>,
) -> ContainerSpec {
    let mut spec = ContainerSpec::new(container_name(task), task.spec.image.clone());
    spec.command = task.spec.command.clone();
    spec.env = task.spec.env.clone();
    for (k, v) in &task.spec.secret_env {
        if let Some(v) = v.value() {
            spec.env.insert(k.clone(), v.to_owned());
        }
    }
    spec.env
        .entry("PORT".into())
        .or_insert_with(|| task.spec.port.to_string());
    if data_mount.is_some() {
        spec.env
            .entry("DATA_DIR".into())
            .or_insert_with(|| DATA_MOUNT.to_string());
    }
    spec.labels.insert(LABEL_NODE.into(), node_id.into());
    spec.labels.insert(LABEL_TASK.into(), task.id.clone());
    spec.container_port = task.spec.port;
    spec.data_mount = data_mount;
    spec.memory_mb = task.spec.resources.memory_mb;
    spec.user = task.spec.user.clone();
    spec.read_only = task.spec.read_only;
    spec.cpus = task.spec.resources.cpus;
    spec.pids = task.spec.resources.pids;
    spec
}

/// The node's least-privilege policy: operators may require every app to name a non-root user
/// and to run on a read-only root filesystem.
pub fn check_policy(cfg: &crate::config::NodeConfig, task: &Task) -> Result<(), StartError> {
    if cfg.require_non_root {
        let user = task.spec.user.as_deref().unwrap_or("");
        let name = user.split(':').next().unwrap_or("");
        if name.is_empty() || name == "root" || name == "0" {
            return Err(StartError::Policy(format!(
                "apps here must run as a non-root user (SHADOW_REQUIRE_NON_ROOT); set the task's user, e.g. \"1000:1000\" (it has {user:?})"
            )));
        }
    }
    if cfg.require_read_only && !task.spec.read_only {
        return Err(StartError::Policy(
            "apps here must run on a read-only root filesystem (SHADOW_REQUIRE_READ_ONLY); set the task's read_only to true (/data and /tmp stay writable)".into(),
        ));
    }
    Ok(())
}

/// The limits an app runs with: its task's, else the node's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: i64,
}

pub fn limits(cfg: &crate::config::NodeConfig, task: &Task) -> Limits {
    let r = &task.spec.resources;
    Limits {
        memory_mb: r.memory_mb.unwrap_or(cfg.default_memory_mb),
        cpus: r.cpus.unwrap_or(cfg.default_cpus),
        pids: r.pids.unwrap_or(cfg.default_pids),
    }
}

/// How long an app may listen only on other ports than its task's before the start fails: some
/// open an admin port before their main one.
const WRONG_PORT_GRACE: Duration = Duration::from_secs(5);

/// Probes until the app answers, failing fast if the container exits meanwhile.
///
/// The first probe goes out at once and the next ones back off from a millisecond
/// ([`Backoff`] from a millisecond to the health interval), so an app is seen within a few milliseconds of listening; Docker is
/// asked whether the container still runs only every [`ready::INSPECT_EVERY`], as asking costs
/// more than a probe.
async fn wait_ready(ctx: &AppContext, task: &Task, c: &RunningContainer) -> Result<(), StartError> {
    let interval = Duration::from_millis(task.spec.health.interval_ms);
    let path = task.spec.health.path.as_deref();
    let began = Instant::now();
    let mut delays = Backoff::new(Duration::from_millis(1), interval);
    let mut inspected = began;
    loop {
        if ctx
            .runtime
            .probe(c.host_addr, path, interval.max(Duration::from_millis(500)))
            .await
        {
            return Ok(());
        }
        if inspected.elapsed() >= ready::INSPECT_EVERY {
            inspected = Instant::now();
            if let Some(status) = ctx.runtime.inspect(&c.id).await? {
                // An app that has been listening a while, only on other ports, has the wrong
                // one: say so now rather than after start_timeout_s.
                if status.running && began.elapsed() >= WRONG_PORT_GRACE {
                    if let Some(ports) = status.pid.and_then(ready::listening_ports) {
                        if !ports.is_empty() && !ports.contains(&task.spec.port) {
                            let listening = ports
                                .iter()
                                .map(u16::to_string)
                                .collect::<Vec<_>>()
                                .join(", ");
                            return Err(StartError::WrongPort {
                                port: task.spec.port,
                                listening,
                            });
                        }
                    }
                }
                if !status.running {
                    let logs = ctx.runtime.logs_tail(&c.id, 20).await.unwrap_or_default();
                    let status = match status.exit_code {
                        Some(code) => format!(
                            "{}, exit code {code}{}",
                            status.status,
                            if status.oom_killed {
                                ", killed for memory"
                            } else {
                                ""
                            }
                        ),
                        None => status.status,
                    };
                    return Err(StartError::Exited { status, logs });
                }
            }
        }
        tokio::time::sleep(delays.next_delay()).await;
    }
}

/// Undoes whatever a failed start made, in reverse order. A start whose lease ran out kills its
/// container at once and does not write the volume back.
pub async fn clean_up(ctx: &AppContext, task: &Task, partial: Partial) {
    let lease_ok = partial.lease.as_ref().is_none_or(|l| l.is_valid());
    if let Some(container) = &partial.container {
        if !lease_ok {
            ctx.kill(task, container).await;
        }
        if let Ok(logs) = ctx.runtime.logs_tail(container, 20).await {
            if !logs.trim().is_empty() {
                tracing::error!(task = %task.id, container = %container, "last log lines of the failed app:\n{logs}");
            }
        }
        if lease_ok {
            ctx.kill(task, container).await;
        }
    }
    if let Some(sandbox) = &partial.sandbox {
        ctx.sandboxes.discard(sandbox).await;
    }
    let mut keep_lease = false;
    if let Some((backend, attached)) = &partial.volume {
        let lease = partial.lease.as_deref();
        let result = if lease_ok {
            backend.detach(task, attached, &ctx.fence(lease)).await
        } else {
            backend.abandon(task, attached).await
        };
        if let Err(e) = result {
            tracing::error!(task = %task.id, error = %e, "cannot let go of the failed app's volume; keeping its lease");
            keep_lease = true;
        }
    }
    if let (Some(lease), false) = (&partial.lease, keep_lease || !lease_ok) {
        if let Err(e) = lease.release().await {
            tracing::warn!(task = %task.id, error = %e, "cannot release the lease; it will lapse by itself");
        }
    }
}
