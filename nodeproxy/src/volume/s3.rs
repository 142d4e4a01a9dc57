//! The `s3` backend: a task's `/data` is a directory on the node, restored from the task's
//! latest snapshot in S3 on attach and written back as a new snapshot on checkpoint and
//! detach.
//!
//! A commit never overwrites a snapshot. It uploads a new object under a new key carrying the
//! lease token, then flips the task's pointer to it, guarded three ways: the pointer's token
//! must not be newer than ours, the master must still call our token the newest (asked right
//! before the flip), and the flip is a conditional write on the pointer's ETag as read
//! (`If-Match`, or `If-None-Match: *` for the first), so a writer that slipped in between
//! loses. A reader follows the pointer, so it never sees a half-written snapshot. Old
//! snapshots are then pruned down to the configured number.
//!
//! # Layout
//! - [`keys`]: object names, the pointer format, which snapshots retention deletes.
//! - [`store`]: the S3 calls, error classification, streamed multipart uploads.
//! - [`transfer`]: a directory to a snapshot object and back, streaming.
//! - [`archive`]: packing a directory and unpacking an untrusted archive (blocking code).
//! - [`pipe`]: bounded channels between the blocking archive code and the async transfers.
//! - [`local_copy`]: the node's copy of a volume and what snapshot it descends from.
//! - [`client`]: the SDK client from the node's settings.

pub mod archive;
pub mod client;
pub mod keys;
pub mod local_copy;
pub mod pipe;
pub mod store;
pub mod transfer;

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use shadow_common::task::Task;
use tokio::time::Instant;

use self::{
    archive::ArchiveError,
    client::S3Settings,
    keys::Pointer,
    local_copy::LocalCopy,
    store::{Condition, Store, StoreError},
    transfer::TransferError,
};
use super::{Attached, Fence, VolumeBackend, VolumeError};
use crate::config::NodeConfig;

/// Times a commit re-reads the pointer after losing a conditional write.
const COMMIT_TRIES: usize = 3;

/// Volumes kept as snapshots in one S3 bucket, restored to `<data dir>/s3/<task id>`.
pub struct S3Volumes {
    store: Store,
    local: LocalCopy,
    keep: usize,
    region: String,
    /// Seeds must be keys under this prefix: never another task's snapshots.
    seed_prefix: String,
    /// Disk a restore must leave free on the node, in bytes.
    disk_reserve: u64,
    data_dir: PathBuf,
}

/// Free space for `path`'s file system, asked of its nearest existing ancestor: the volumes'
/// directory is made only once a restore is allowed.
fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    let mut at = path;
    loop {
        match fs4::available_space(at) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Where seeds live unless the node says otherwise.
pub const DEFAULT_SEED_PREFIX: &str = "seeds/";

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> String {
    format!(
        "{:.1}",
        bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-6)
    )
}

fn io_error(task: &str, message: String) -> VolumeError {
    VolumeError::Io {
        task: task.to_string(),
        message,
    }
}

fn store_error(task: &str, e: StoreError) -> VolumeError {
    match e {
        StoreError::Unavailable(message) => VolumeError::Unavailable {
            task: task.to_string(),
            message,
        },
        StoreError::PreconditionFailed(message) | StoreError::Other(message) => {
            io_error(task, message)
        }
    }
}

fn transfer_error(task: &str, e: TransferError) -> VolumeError {
    match e {
        TransferError::Store(e) => store_error(task, e),
        TransferError::Archive(ArchiveError::Unsafe(message)) => VolumeError::UnsafeArchive {
            task: task.to_string(),
            message,
        },
        TransferError::Archive(ArchiveError::Io(message)) => io_error(task, message),
        TransferError::Missing(what) => io_error(task, what),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl S3Volumes {
    /// The backend the node's settings ask for; `None` when no bucket is set. Reaches nothing
    /// yet: an unreachable store shows on the first attach, as [`VolumeError::Unavailable`].
    pub async fn from_config(config: &NodeConfig) -> Result<Option<Self>, VolumeError> {
        let Some(bucket) = config.s3_bucket.as_deref().filter(|b| !b.trim().is_empty()) else {
            return Ok(None);
        };
        let settings = S3Settings {
            endpoint: config.s3_endpoint.clone(),
            region: config.s3_region.clone(),
            path_style: config.s3_path_style,
            access_key: config.s3_access_key.clone(),
            secret_key: config.s3_secret_key.clone(),
        };
        let mut vols = Self::new(
            &settings,
            bucket.trim(),
            &config.data_dir,
            config.snapshot_keep as usize,
        )
        .await?;
        vols.seed_prefix = config.seed_prefix.clone();
        vols.disk_reserve = config.disk_reserve_mb.saturating_mul(1024 * 1024);
        Ok(Some(vols))
    }

    /// A backend on `bucket`, restoring into `<data_dir>/volumes`, keeping `keep` snapshots
    /// per task (at least one).
    pub async fn new(
        settings: &S3Settings,
        bucket: &str,
        data_dir: &std::path::Path,
        keep: usize,
    ) -> Result<Self, VolumeError> {
        let client = client::build(settings)
            .await
            .map_err(|message| io_error("*", message))?;
        let endpoint = settings
            .endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        Ok(Self {
            store: Store::new(client, bucket, endpoint),
            local: LocalCopy::new(data_dir),
            keep: keep.max(1),
            region: settings.region(),
            seed_prefix: DEFAULT_SEED_PREFIX.to_string(),
            disk_reserve: 0,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The seed key, if it is under the node's seed prefix: a task must not start from another
    /// task's snapshot (or any key it happens to know).
    fn checked_seed(&self, task: &Task, seed: &str) -> Result<String, VolumeError> {
        let key = seed.trim();
        if key.starts_with(&self.seed_prefix) && !key.contains("..") {
            return Ok(key.to_string());
        }
        Err(io_error(
            &task.id,
            format!(
                "volume.seed {key:?} is not under this node's seed prefix {:?}; put the seed archive there (SHADOW_SEED_PREFIX), never another task's snapshot",
                self.seed_prefix
            ),
        ))
    }

    /// How much a restore may unpack: the volume's size, and what the node's disk has free
    /// beyond its reserve, whichever is less.
    fn restore_limit(&self, task: &Task) -> Result<u64, VolumeError> {
        let size = u64::from(task.spec.volume.size_gb) * 1024 * 1024 * 1024;
        let free = free_space(&self.data_dir).map_err(|e| {
            io_error(
                &task.id,
                format!(
                    "cannot read the free space of {}: {e}",
                    self.data_dir.display()
                ),
            )
        })?;
        let usable = free.saturating_sub(self.disk_reserve);
        if usable == 0 {
            return Err(io_error(
                &task.id,
                format!(
                    "the node's disk has {} MiB free, not more than its reserve (SHADOW_DISK_RESERVE_MB); free space on {} or start the app elsewhere",
                    free / (1024 * 1024),
                    self.data_dir.display()
                ),
            ));
        }
        Ok(size.min(usable))
    }

    /// The bucket, for tests and tools (raw transfers, inspecting keys).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates the bucket unless it exists (tests, first set-ups).
    pub async fn ensure_bucket(&self) -> Result<(), VolumeError> {
        self.store
            .ensure_bucket(&self.region)
            .await
            .map_err(|e| store_error("*", e))
    }

    /// Where `task_id`'s data lives on this node while attached.
    pub fn dir(&self, task_id: &str) -> PathBuf {
        self.local.dir(task_id)
    }

    /// The task's pointer and its ETag, `None` before the first commit.
    pub async fn pointer(&self, task_id: &str) -> Result<Option<(Pointer, String)>, VolumeError> {
        let key = keys::pointer_key(task_id);
        match self.store.get_small(&key).await {
            Ok(None) => Ok(None),
            Ok(Some((bytes, etag))) => Pointer::from_json(&bytes)
                .map(|p| Some((p, etag)))
                .map_err(|m| io_error(task_id, format!("{key}: {m}"))),
            Err(e) => Err(store_error(task_id, e)),
        }
    }

    /// Points the task at `key`, unless a newer lease holder got there first. On a refusal
    /// the new snapshot is deleted (nothing names it). An ambiguous failure (the pointer
    /// write may or may not have happened) keeps it: retention removes it later if unused.
    async fn commit(&self, task_id: &str, fence: &Fence, key: &str) -> Result<(), VolumeError> {
        let pointer_key = keys::pointer_key(task_id);
        let refused = |why: String| VolumeError::Fenced {
            task: task_id.to_string(),
            token: fence.token,
            why,
        };
        for _ in 0..COMMIT_TRIES {
            let current = self.pointer(task_id).await?;
            if let Some((p, _)) = &current {
                if p.token > fence.token {
                    self.discard(task_id, key).await;
                    return Err(refused(format!(
                        "the volume's last snapshot was committed under token {}",
                        p.token
                    )));
                }
            }
            if let Err(e) = fence.verify(task_id).await {
                self.discard(task_id, key).await;
                return Err(e);
            }
            let pointer = Pointer {
                key: key.to_string(),
                token: fence.token,
                created_ms: now_ms(),
            };
            let condition = match current {
                Some((_, etag)) => Condition::Matches(etag),
                None => Condition::Absent,
            };
            match self
                .store
                .put_small(&pointer_key, pointer.to_json(), Some(condition))
                .await
            {
                Ok(()) => return Ok(()),
                Err(StoreError::PreconditionFailed(m)) => {
                    tracing::warn!(task = %task_id, error = %m, "the snapshot pointer changed while committing; checking again");
                }
                Err(e) => return Err(store_error(task_id, e)),
            }
        }
        self.discard(task_id, key).await;
        Err(refused(
            "the snapshot pointer kept changing while committing".into(),
        ))
    }

    async fn discard(&self, task_id: &str, key: &str) {
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(task = %task_id, %key, error = %e, "cannot delete an uncommitted snapshot; retention will");
        }
    }

    /// Deletes all but the newest snapshots; failures only cost space, so they are logged.
    async fn prune(&self, task_id: &str, current: &str) {
        let keys = match self.store.list(&keys::snapshots_prefix(task_id)).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(task = %task_id, error = %e, "cannot list old snapshots");
                return;
            }
        };
        for victim in keys::retention_victims(task_id, &keys, self.keep, current) {
            match self.store.delete(&victim).await {
                Ok(()) => tracing::debug!(task = %task_id, key = %victim, "old snapshot deleted"),
                Err(e) => {
                    tracing::warn!(task = %task_id, key = %victim, error = %e, "cannot delete an old snapshot")
                }
            }
        }
    }

    /// Snapshot, commit, prune: the common part of checkpoint and detach. Returns the key of
    /// the committed snapshot.
    async fn persist(&self, task: &Task, fence: &Fence) -> Result<String, VolumeError> {
        keys::check_task_id(&task.id).map_err(|m| io_error(&task.id, m))?;
        let dir = self.local.dir(&task.id);
        // Packing a missing directory would commit an empty snapshot over the real one.
        if !tokio::fs::symlink_metadata(&dir)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(io_error(
                &task.id,
                format!(
                    "{} is missing or not a directory; not committing an empty snapshot over \
                     the last one",
                    dir.display()
                ),
            ));
        }
        let key = keys::new_snapshot_key(&task.id, fence.token);
        let report = transfer::upload(&self.store, &dir, &key)
            .await
            .map_err(|e| transfer_error(&task.id, e))?;
        let flip = Instant::now();
        self.commit(&task.id, fence, &key).await?;
        tracing::info!(
            key = %key,
            files = report.packed.files,
            skipped = report.packed.skipped,
            data_mib = %mib(report.packed.bytes),
            uploaded_mib = %mib(report.uploaded),
            secs = %format!("{:.2}", report.elapsed.as_secs_f64()),
            mib_per_s = %mib_per_s(report.packed.bytes, report.elapsed),
            commit_ms = flip.elapsed().as_millis() as u64,
            "volume persisted"
        );
        if let Err(e) = self.local.set_base(&task.id, &key).await {
            tracing::warn!(error = %e, "cannot record the committed snapshot next to the local copy");
        }
        self.prune(&task.id, &key).await;
        Ok(key)
    }
}

#[async_trait]
impl VolumeBackend for S3Volumes {
    /// Restores the snapshot the pointer names, or the task's seed before the first commit,
    /// or starts empty. A complete local copy that descends from that very snapshot (a detach
    /// that could not reach S3, a node restart) is newer than it, and is kept instead.
    #[tracing::instrument(name = "s3_attach", skip_all, fields(task = %task.id, token = fence.token))]
    async fn attach(&self, task: &Task, fence: &Fence) -> Result<Attached, VolumeError> {
        keys::check_task_id(&task.id).map_err(|m| io_error(&task.id, m))?;
        let pointer = self.pointer(&task.id).await?.map(|(p, _)| p);
        if let Some(p) = &pointer {
            if p.token > fence.token {
                return Err(VolumeError::Fenced {
                    task: task.id.clone(),
                    token: fence.token,
                    why: format!(
                        "the volume's last snapshot was committed under token {}",
                        p.token
                    ),
                });
            }
        }
        let base = pointer.as_ref().map(|p| p.key.clone()).unwrap_or_default();
        let dir = self.local.dir(&task.id);
        let prepare = |e: std::io::Error| {
            io_error(
                &task.id,
                format!(
                    "cannot prepare {}: {e}; check the node's data dir",
                    dir.display()
                ),
            )
        };
        if self.local.base(&task.id).await.as_deref() == Some(base.as_str()) {
            tracing::warn!(
                base = %base,
                "keeping the local copy: it descends from the last snapshot and has not been \
                 written back yet"
            );
            self.local.reopen(&task.id).await.map_err(prepare)?;
        } else {
            // Every refusal comes before the directory is made: a refused attach leaves nothing.
            let source = match (&pointer, &task.spec.volume.seed) {
                (Some(p), _) => Some((p.key.clone(), "snapshot")),
                (None, Some(seed)) => Some((self.checked_seed(task, seed)?, "seed")),
                (None, None) => None,
            };
            let limit = match source {
                Some(_) => self.restore_limit(task)?,
                None => 0,
            };
            self.local.fresh(&task.id).await.map_err(prepare)?;
            if let Some((key, from)) = source {
                match transfer::restore(&self.store, &key, &dir, limit).await {
                    Ok(r) => tracing::info!(
                        key = %key,
                        from,
                        files = r.unpacked.files,
                        skipped = r.unpacked.skipped,
                        data_mib = %mib(r.unpacked.bytes),
                        downloaded_mib = %mib(r.downloaded),
                        secs = %format!("{:.2}", r.elapsed.as_secs_f64()),
                        mib_per_s = %mib_per_s(r.unpacked.bytes, r.elapsed),
                        "volume restored"
                    ),
                    Err(e) => {
                        // Never leave a half-restored volume for a container to start on.
                        if let Err(e) = self.local.remove(&task.id).await {
                            tracing::warn!(error = %e, "cannot remove a half-restored volume; the next attach empties it");
                        }
                        return Err(transfer_error(&task.id, e));
                    }
                }
            } else {
                tracing::info!("no snapshot yet: the volume starts empty");
            }
            if let Err(e) = self.local.set_base(&task.id, &base).await {
                tracing::warn!(error = %e, "cannot record the restored snapshot next to the local copy");
            }
        }
        let host_path = tokio::fs::canonicalize(&dir)
            .await
            .map_err(|e| io_error(&task.id, format!("cannot resolve {}: {e}", dir.display())))?;
        Ok(Attached::dir(host_path))
    }

    #[tracing::instrument(name = "s3_checkpoint", skip_all, fields(task = %task.id, token = fence.token))]
    async fn checkpoint(
        &self,
        task: &Task,
        _attached: &Attached,
        fence: &Fence,
    ) -> Result<(), VolumeError> {
        self.persist(task, fence).await.map(|_| ())
    }

    /// After a successful commit the local copy is removed (the data lives in S3); on failure
    /// it stays, and the node keeps the lease. An attach on this node keeps that copy as long
    /// as no other node committed since.
    #[tracing::instrument(name = "s3_detach", skip_all, fields(task = %task.id, token = fence.token))]
    async fn detach(
        &self,
        task: &Task,
        _attached: &Attached,
        fence: &Fence,
    ) -> Result<(), VolumeError> {
        self.persist(task, fence).await?;
        if let Err(e) = self.local.remove(&task.id).await {
            tracing::warn!(error = %e, "cannot remove the local copy; the next attach empties it");
        }
        Ok(())
    }
}
