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
    client::ClientError,
    task::{Task, DATA_MOUNT},
};
use tokio::{sync::Notify, time::Instant};

use crate::{
    activity::Activity,
    apps::AppContext,
    ready,
    runtime::{ContainerSpec, RunningContainer, RuntimeError},
    volume::{Attached, VolumeBackend, VolumeError},
};

/// Container labels: which node made it, for which task. A node touches only its own.
pub const LABEL_NODE: &str = "shadow.node";
pub const LABEL_TASK: &str = "shadow.task";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {holder} holds the task's volume lease; its requests belong there")]
    LeaseHeld { holder: String },
    #[error("cannot take the task's lease: {0}")]
    Master(#[from] ClientError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the container exited before it answered ({status}); its last log lines:\n{logs}")]
    Exited { status: String, logs: String },
    #[error("the app did not answer within start_timeout_s ({0:?})")]
    Timeout(Duration),
}

/// What a start has made so far, for undoing it.
#[derive(Default)]
pub struct Partial {
    pub lease: Option<u64>,
    pub volume: Option<(Arc<dyn VolumeBackend>, Attached)>,
    /// Set before the create call, so a start cut off mid-create still removes it by name.
    pub container: Option<String>,
}

/// A running app.
pub struct Running {
    pub task: Arc<Task>,
    pub container: RunningContainer,
    pub activity: Arc<Activity>,
    /// The fencing token of the task's lease, for stateful tasks.
    pub lease: Option<u64>,
    pub volume: Option<(Arc<dyn VolumeBackend>, Attached)>,
    /// Signalled when the lease is lost: the app must stop at once.
    pub lost: Notify,
    /// Signalled when a request brings a changed spec: stop, so the next start uses it.
    pub replaced: Notify,
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
    format!("shadow-{}-{}", task.id, SEQ.fetch_add(1, Ordering::Relaxed))
}

fn record<T>(partial: &Mutex<Partial>, f: impl FnOnce(&mut Partial) -> T) -> T {
    f(&mut partial.lock().unwrap_or_else(|e| e.into_inner()))
}

pub async fn start(
    ctx: &AppContext,
    task: &Arc<Task>,
    partial: &Mutex<Partial>,
) -> Result<Running, StartError> {
    let cfg = &ctx.config;
    let began = Instant::now();

    let mut token = None;
    if task.spec.volume.kind.is_stateful() {
        let grant = match ctx
            .master
            .acquire_lease(&task.id, &cfg.node_id, cfg.lease_ttl())
            .await
        {
            Ok(g) => g,
            Err(ClientError::LeaseConflict {
                holder: Some(holder),
                ..
            }) => return Err(StartError::LeaseHeld { holder }),
            Err(e) => return Err(e.into()),
        };
        record(partial, |p| p.lease = Some(grant.token));
        token = Some(grant.token);
    }
    ctx.metrics.phase("lease", began.elapsed());

    // No lease keeper runs until the app does: renew the lease here meanwhile, since attaching a
    // large volume, pulling an image or a slow readiness can each outlast it.
    let fence = ctx.fence(token);
    let container = fence
        .keeping(
            &task.id,
            ctx.renew_every(),
            bring_up(ctx, task, partial, &fence),
        )
        .await?;
    tracing::info!(
        task = %task.id,
        container = %container.name,
        addr = %container.host_addr,
        ms = began.elapsed().as_millis() as u64,
        "app started"
    );

    let volume = record(partial, |p| {
        // The start succeeded: the running app owns these now, not the clean-up.
        p.lease = None;
        p.container = None;
        p.volume.take()
    });
    Ok(Running {
        task: task.clone(),
        container,
        activity: Activity::new(),
        lease: token,
        volume,
        lost: Notify::new(),
        replaced: Notify::new(),
    })
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
    if let Some(backend) = ctx.volumes.backend(task)? {
        let attached = backend.attach(task, fence).await?;
        data_mount = Some(attached.host_path.clone());
        record(partial, |p| p.volume = Some((backend, attached)));
    }
    ctx.metrics.phase("volume", t.elapsed());

    let t = Instant::now();
    ctx.runtime.ensure_image(&task.spec.image).await?;
    ctx.metrics.phase("image", t.elapsed());

    let t = Instant::now();
    let spec = container_spec(task, &cfg.node_id, data_mount);
    record(partial, |p| p.container = Some(spec.name.clone()));
    let container = ctx.runtime.create_and_start(&spec).await?;
    record(partial, |p| p.container = Some(container.id.clone()));
    ctx.metrics.phase("create_start", t.elapsed());

    let t = Instant::now();
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
    spec.cpus = task.spec.resources.cpus;
    spec.pids = task.spec.resources.pids;
    spec
}

/// Probes until the app answers, failing fast if the container exits meanwhile.
async fn wait_ready(ctx: &AppContext, task: &Task, c: &RunningContainer) -> Result<(), StartError> {
    let interval = Duration::from_millis(task.spec.health.interval_ms);
    let path = task.spec.health.path.as_deref();
    let mut probes = 0u32;
    loop {
        if ready::probe(c.host_addr, path, interval.max(Duration::from_millis(500))).await {
            return Ok(());
        }
        probes += 1;
        // Asking Docker costs more than a probe; every few probes is enough to fail fast.
        if probes % 5 == 1 {
            if let Some(status) = ctx.runtime.inspect(&c.id).await? {
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
        tokio::time::sleep(interval).await;
    }
}

/// Undoes whatever a failed start made, in reverse order.
pub async fn clean_up(ctx: &AppContext, task: &Task, partial: Partial) {
    if let Some(container) = &partial.container {
        if let Ok(logs) = ctx.runtime.logs_tail(container, 20).await {
            if !logs.trim().is_empty() {
                tracing::error!(task = %task.id, container = %container, "last log lines of the failed app:\n{logs}");
            }
        }
        if let Err(e) = ctx.runtime.stop_and_remove(container, Duration::ZERO).await {
            tracing::error!(task = %task.id, error = %e, "cannot remove the failed app's container");
        }
    }
    let mut keep_lease = false;
    if let Some((backend, attached)) = &partial.volume {
        let fence = ctx.fence(partial.lease);
        let detach = backend.detach(task, attached, &fence);
        if let Err(e) = fence.keeping(&task.id, ctx.renew_every(), detach).await {
            tracing::error!(task = %task.id, error = %e, "cannot detach the failed app's volume; keeping its lease");
            keep_lease = true;
        }
    }
    if let (Some(token), false) = (partial.lease, keep_lease) {
        if let Err(e) = ctx.master.release_lease(&task.id, token).await {
            tracing::warn!(task = %task.id, error = %e, "cannot release the lease; it will lapse by itself");
        }
    }
}
