//! The volume seam: where a task's `/data` comes from before its container starts and where it
//! goes after the container stopped.
//!
//! One trait for every backend: a directory on this node (`local`), a snapshot restored from and
//! written back to S3 (`s3`), or a block device attached, mounted, unmounted and detached (`ebs`,
//! `do`). Every call carries the task's [`Fence`]: the lease token plus a way to ask the master,
//! at the last moment, whether that token is still the newest, so a backend that commits data
//! never commits over a newer holder's.

pub mod block;
pub mod digitalocean;
pub mod ebs;
pub mod local;
pub mod s3;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use shadow_common::task::{Task, VolumeKind};

/// What an attach produced: the host directory to bind-mount at `/data`, and for block devices
/// whatever the backend needs to undo the attach.
#[derive(Debug, Clone)]
pub struct Attached {
    pub host_path: PathBuf,
    /// Backend-specific detail (a device path, a volume id), opaque to the node.
    pub detail: Option<String>,
}

impl Attached {
    pub fn dir(host_path: PathBuf) -> Self {
        Self {
            host_path,
            detail: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume of task {task}: {message}")]
    Io { task: String, message: String },
    #[error("task {task} asks for a {kind:?} volume, which this node is not configured for; configure the backend on the node (see docs/operations.md) or change the task's volume.kind")]
    Unsupported { task: String, kind: VolumeKind },
    #[error("volume store for task {task} is unreachable: {message}; check the node's storage settings and network")]
    Unavailable { task: String, message: String },
    #[error("task {task}: lease token {token} is no longer the newest ({why}); not committing over a newer holder's data")]
    Fenced {
        task: String,
        token: u64,
        why: String,
    },
    #[error("task {task}: the archive is unsafe and was refused: {message}")]
    UnsafeArchive { task: String, message: String },
}

/// Asks whoever grants leases whether `token` is still the task's newest.
#[async_trait]
pub trait FenceCheck: Send + Sync {
    async fn still_current(&self, task_id: &str, token: u64) -> Result<(), String>;
}

/// The lease token a volume operation runs under, checked again right before a commit.
#[derive(Clone)]
pub struct Fence {
    pub token: u64,
    check: Option<Arc<dyn FenceCheck>>,
}

impl Fence {
    pub fn new(token: u64, check: Arc<dyn FenceCheck>) -> Self {
        Self {
            token,
            check: Some(check),
        }
    }

    /// For tasks without a lease and for tests: every check passes.
    pub fn unchecked(token: u64) -> Self {
        Self { token, check: None }
    }

    /// Fails with [`VolumeError::Fenced`] unless the token is still the task's newest.
    pub async fn verify(&self, task_id: &str) -> Result<(), VolumeError> {
        match &self.check {
            None => Ok(()),
            Some(c) => {
                c.still_current(task_id, self.token)
                    .await
                    .map_err(|why| VolumeError::Fenced {
                        task: task_id.to_string(),
                        token: self.token,
                        why,
                    })
            }
        }
    }
}

impl Fence {
    /// Runs `work` (an attach or a detach) while renewing the lease every `every`: moving a
    /// large volume can take longer than the lease lives, and no lease keeper runs before the
    /// app started or after it stopped. A failed renewal is only logged here; commits check the
    /// fence themselves, and a lost lease shows when the app runs or stops.
    pub async fn keeping<T>(
        &self,
        task_id: &str,
        every: Duration,
        work: impl Future<Output = T>,
    ) -> T {
        if self.check.is_none() {
            return work.await;
        }
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = self.verify(task_id).await {
                    tracing::warn!(task = %task_id, error = %e, "cannot renew the lease during a long volume step");
                }
            }
        };
        tokio::select! {
            out = work => out,
            never = renew => never,
        }
    }
}

/// A volume backend. Calls for one task never overlap: the node serializes a task's life cycle.
#[async_trait]
pub trait VolumeBackend: Send + Sync {
    /// Makes the task's data available on this node.
    async fn attach(&self, task: &Task, fence: &Fence) -> Result<Attached, VolumeError>;

    /// Saves the data while the app runs (periodic checkpoints); a no-op where data is never
    /// copied (local directories, block devices).
    async fn checkpoint(
        &self,
        _task: &Task,
        _attached: &Attached,
        _fence: &Fence,
    ) -> Result<(), VolumeError> {
        Ok(())
    }

    /// Lets go of the volume's local state without committing anything, after the lease was
    /// lost (a newer holder may be writing): e.g. unmount a device, drop a local copy.
    async fn abandon(&self, _task: &Task, _attached: &Attached) -> Result<(), VolumeError> {
        Ok(())
    }

    /// Writes back / releases the data after the container stopped. On error the caller keeps
    /// the lease, so no other node takes the volume before this one let go of it.
    async fn detach(
        &self,
        task: &Task,
        attached: &Attached,
        fence: &Fence,
    ) -> Result<(), VolumeError>;
}

/// The backends this node is configured with, picked per task by its `volume.kind`.
#[derive(Clone, Default)]
pub struct Volumes {
    pub local: Option<Arc<dyn VolumeBackend>>,
    pub s3: Option<Arc<dyn VolumeBackend>>,
    pub ebs: Option<Arc<dyn VolumeBackend>>,
    pub digitalocean: Option<Arc<dyn VolumeBackend>>,
}

impl Volumes {
    /// The backend for `task`, `None` for a task without a volume.
    pub fn backend(&self, task: &Task) -> Result<Option<Arc<dyn VolumeBackend>>, VolumeError> {
        let kind = task.spec.volume.kind;
        let backend = match kind {
            VolumeKind::None => return Ok(None),
            VolumeKind::Local => &self.local,
            VolumeKind::S3 => &self.s3,
            VolumeKind::Ebs => &self.ebs,
            VolumeKind::Do => &self.digitalocean,
        };
        backend
            .clone()
            .map(Some)
            .ok_or_else(|| VolumeError::Unsupported {
                task: task.id.clone(),
                kind,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    struct Counting(AtomicU32);

    #[async_trait]
    impl FenceCheck for Counting {
        async fn still_current(&self, _task_id: &str, _token: u64) -> Result<(), String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_volume_step_renews_the_lease_until_it_ends() {
        let check = Arc::new(Counting(AtomicU32::new(0)));
        let fence = Fence::new(7, check.clone());
        let every = Duration::from_secs(5);
        let out = fence
            .keeping("t", every, async {
                tokio::time::sleep(every * 10 + Duration::from_secs(1)).await;
                42
            })
            .await;
        assert_eq!(out, 42);
        assert_eq!(check.0.load(Ordering::SeqCst), 10, "one renewal per period");
        tokio::time::sleep(every * 3).await;
        assert_eq!(
            check.0.load(Ordering::SeqCst),
            10,
            "none after the step ended"
        );
    }
}
