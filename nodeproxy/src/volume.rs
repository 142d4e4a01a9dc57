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

use std::{path::PathBuf, sync::Arc};

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

/// Why a fence check did not confirm the token.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// A newer token exists, or the lease lapsed: committing would overwrite a newer holder.
    #[error("{0}")]
    Superseded(String),
    /// The question could not be asked (the master is unreachable): try again later; the
    /// lease's own deadline decides whether the app may go on.
    #[error("{0}")]
    Unreachable(String),
}

/// Asks whoever grants leases whether `token` is still the task's newest.
#[async_trait]
pub trait FenceCheck: Send + Sync {
    async fn still_current(&self, task_id: &str, token: u64) -> Result<(), FenceError>;
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

    /// Fails with [`VolumeError::Fenced`] unless the token is still the task's newest, or with
    /// [`VolumeError::Unavailable`] when that cannot be asked now.
    pub async fn verify(&self, task_id: &str) -> Result<(), VolumeError> {
        let Some(c) = &self.check else {
            return Ok(());
        };
        c.still_current(task_id, self.token)
            .await
            .map_err(|e| match e {
                FenceError::Superseded(why) => VolumeError::Fenced {
                    task: task_id.to_string(),
                    token: self.token,
                    why,
                },
                FenceError::Unreachable(message) => VolumeError::Unavailable {
                    task: task_id.to_string(),
                    message: format!("cannot confirm the lease before committing: {message}"),
                },
            })
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
    /// The stateful kinds this node can run.
    pub fn kinds(&self) -> Vec<VolumeKind> {
        [
            (VolumeKind::Local, &self.local),
            (VolumeKind::S3, &self.s3),
            (VolumeKind::Ebs, &self.ebs),
            (VolumeKind::Do, &self.digitalocean),
        ]
        .into_iter()
        .filter(|(_, b)| b.is_some())
        .map(|(k, _)| k)
        .collect()
    }

    /// The backend for `task`, `None` for a task without a volume.
    pub fn backend(&self, task: &Task) -> Result<Option<Arc<dyn VolumeBackend>>, VolumeError> {
        self.for_kind(task, task.spec.volume.kind)
    }

    /// The backend of `kind` for `task` (a migration reads the old one).
    pub fn for_kind(
        &self,
        task: &Task,
        kind: VolumeKind,
    ) -> Result<Option<Arc<dyn VolumeBackend>>, VolumeError> {
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
