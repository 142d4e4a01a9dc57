//! Block volumes (`ebs`, `do`): a cloud disk that follows the app from node to node.
//!
//! The life cycle is the same for every cloud, so it lives here once, in [`BlockVolumes`]; a
//! [`BlockCloud`] does only the cloud's part:
//! - attach: find the task's volume (create it if none, move it if it lives where this node
//!   cannot attach it, take it from a dead node whose lease lapsed), attach it to this node and
//!   wait until the API says attached; then here: wait for the device, make an ext4 filesystem
//!   only if the device is blank, mount it under `<data dir>/block/<task>`, which the container
//!   gets at `/data`.
//! - detach, after the container stopped: sync, unmount, then the cloud's detach, waiting until
//!   the volume is free. Any error is returned: the node then keeps the lease and retries, so
//!   the volume is never mounted on two nodes.
//!
//! An attach may take minutes (a move between zones): the node renews the lease around every
//! attach and detach ([`Fence::keeping`]), so the lease outlives it.
//!
//! # Layout
//! - [`device`]: the device on this node (wait, blank check, mkfs, mount, unmount).
//! - [`poll`]: waiting on the cloud's state with backoff.

pub mod device;
pub mod poll;

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use shadow_common::task::Task;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Attached, Fence, VolumeBackend, VolumeError};

/// How long a device may take to show up after the API says attached.
const DEVICE_WAIT: Duration = Duration::from_secs(120);

/// What a cloud attach produced.
#[derive(Debug, Clone)]
pub struct CloudAttachment {
    /// The cloud's id of the volume, needed to detach it.
    pub volume_id: String,
    /// Where the device may show up on this node, in order of preference.
    pub devices: Vec<PathBuf>,
}

/// A cloud's part of the life cycle. Calls for one task never overlap.
#[async_trait]
pub trait BlockCloud: Send + Sync {
    /// The backend's name in logs: `ebs`, `do`.
    fn name(&self) -> &'static str;

    /// Finds, creates, moves or takes over the task's volume and attaches it to this node;
    /// returns once the API says it is attached here. `fence` is checked before taking a volume
    /// from another node.
    async fn attach(&self, task: &Task, fence: &Fence) -> Result<CloudAttachment, VolumeError>;

    /// Detaches `volume_id` from this node and waits until it is free; already detached is fine.
    async fn detach(&self, task: &Task, volume_id: &str) -> Result<(), VolumeError>;
}

/// The [`VolumeBackend`] for any [`BlockCloud`].
pub struct BlockVolumes<C> {
    cloud: C,
    root: PathBuf,
}

fn io(task: &Task, message: String) -> VolumeError {
    VolumeError::Io {
        task: task.id.clone(),
        message,
    }
}

impl<C: BlockCloud> BlockVolumes<C> {
    /// Mounts volumes under `<data_dir>/block/<task id>`.
    pub fn new(cloud: C, data_dir: &std::path::Path) -> Self {
        Self {
            cloud,
            root: data_dir.join("block"),
        }
    }

    fn mount_dir(&self, task: &Task) -> PathBuf {
        self.root.join(&task.id)
    }

    /// Device → filesystem (only if blank) → mount → a directory Docker can bind.
    async fn mount(&self, task: &Task, a: &CloudAttachment) -> Result<PathBuf, VolumeError> {
        let dev = device::wait_for(&a.devices, DEVICE_WAIT)
            .await
            .map_err(|m| io(task, m))?;
        if device::is_blank(&dev).await.map_err(|m| io(task, m))? {
            tracing::info!(device = %dev.display(), "blank device: making an ext4 filesystem");
            device::make_ext4(&dev).await.map_err(|m| io(task, m))?;
        }
        let dir = self.mount_dir(task);
        device::mount(&dev, &dir).await.map_err(|m| io(task, m))?;
        // The app may run as any user with its capabilities dropped; the node's data dir
        // guards access from outside (as for `local` volumes).
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .await
            .map_err(|e| io(task, format!("cannot open up {}: {e}", dir.display())))?;
        // Docker needs an absolute path for a bind mount.
        let dir = tokio::fs::canonicalize(&dir)
            .await
            .map_err(|e| io(task, format!("cannot resolve {}: {e}", dir.display())))?;
        tracing::info!(device = %dev.display(), dir = %dir.display(), "volume mounted");
        Ok(dir)
    }
}

#[async_trait]
impl<C: BlockCloud> VolumeBackend for BlockVolumes<C> {
    async fn attach(&self, task: &Task, fence: &Fence) -> Result<Attached, VolumeError> {
        let span = tracing::info_span!("block_attach", backend = self.cloud.name(), task = %task.id, token = fence.token);
        let work = async {
            let began = Instant::now();
            let a = self.cloud.attach(task, fence).await?;
            let api_ms = began.elapsed().as_millis() as u64;
            match self.mount(task, &a).await {
                Ok(host_path) => {
                    tracing::info!(volume = %a.volume_id, api_ms, ms = began.elapsed().as_millis() as u64, "volume attached");
                    Ok(Attached {
                        host_path,
                        detail: Some(a.volume_id),
                    })
                }
                Err(e) => {
                    // Nothing else will undo a half-done attach: the start records the volume
                    // only once this returns. Let go of it so another try starts clean.
                    tracing::error!(volume = %a.volume_id, error = %e, "attached but cannot mount; detaching again");
                    let dir = self.mount_dir(task);
                    if let Err(m) = device::unmount(&dir).await {
                        tracing::error!(error = %m, "cannot unmount after a failed attach; leaving the volume attached");
                        return Err(e);
                    }
                    if let Err(d) = self.cloud.detach(task, &a.volume_id).await {
                        tracing::error!(error = %d, "cannot detach after a failed attach; the next attach takes it back");
                    }
                    Err(e)
                }
            }
        };
        work.instrument(span).await
    }

    async fn abandon(&self, task: &Task, _attached: &Attached) -> Result<(), VolumeError> {
        // Only the local mount: a newer holder may have force-detached and re-attached the
        // volume already, and a detach from here would pull it from under them.
        device::unmount_lazy(&self.mount_dir(task))
            .await
            .map_err(|m| io(task, m))
    }

    async fn detach(
        &self,
        task: &Task,
        attached: &Attached,
        fence: &Fence,
    ) -> Result<(), VolumeError> {
        let span = tracing::info_span!("block_detach", backend = self.cloud.name(), task = %task.id, token = fence.token);
        let work = async {
            let began = Instant::now();
            let dir = self.mount_dir(task);
            if device::is_mounted(&dir).await.map_err(|m| io(task, m))? {
                device::sync(&dir).await.map_err(|m| io(task, m))?;
                device::unmount(&dir).await.map_err(|m| io(task, m))?;
            }
            let Some(volume_id) = attached.detail.as_deref() else {
                return Err(io(
                    task,
                    "no volume id recorded for the attach; this is a bug in the node".into(),
                ));
            };
            self.cloud.detach(task, volume_id).await?;
            tracing::info!(volume = %volume_id, ms = began.elapsed().as_millis() as u64, "volume detached");
            Ok(())
        };
        work.instrument(span).await
    }
}
