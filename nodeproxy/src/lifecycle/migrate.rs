//! Moving a task's data to another volume backend after its `volume.kind` changed with
//! `?migrate=true`: the first step of the next start, under the task's lease.
//!
//! Attach the old backend (restore), attach the new one, copy everything (`cp -a`: modes,
//! owners, links, times), write the new one back (detach), let go of the old one (detach, which
//! leaves its data where it was: nothing is deleted), then tell the master, which clears
//! `volume.migrating_from`. A failure anywhere leaves the migration pending and the old data
//! untouched, so the next start tries again from the start; the new volume is emptied before
//! each copy, so a half copy never mixes with the next.

use std::{path::Path, sync::Arc};

use shadow_common::task::{Task, VolumeKind};

use super::{context::AppContext, error::StartError};
use crate::volume::{Fence, VolumeError};

pub async fn migrate(
    ctx: &AppContext,
    task: &Arc<Task>,
    from: VolumeKind,
    fence: &Fence,
) -> Result<(), StartError> {
    let to = task.spec.volume.kind;
    let (Some(old), Some(new)) = (
        ctx.volumes.for_kind(task, from)?,
        ctx.volumes.backend(task)?,
    ) else {
        return Err(StartError::Migration(format!(
            "cannot move the data from {from:?} to {to:?}: one of them has no volume"
        )));
    };
    tracing::info!(task = %task.id, ?from, ?to, "moving the app's data to its new volume");
    let source = old.attach(task, fence).await?;
    let copied = async {
        let target = new.attach(task, fence).await?;
        let copy = copy_tree(&task.id, &source.host_path, &target.host_path).await;
        if let Err(e) = copy {
            // Nothing of the half copy is written back.
            let _ = new.abandon(task, &target).await;
            return Err(e);
        }
        new.detach(task, &target, fence).await
    }
    .await;
    // The old data stays where it is either way; this only lets go of the attachment.
    let released = old.detach(task, &source, fence).await;
    copied?;
    released?;
    ctx.master
        .task_migrated(&task.id, fence.token)
        .await
        .map_err(|e| {
            StartError::Migration(format!(
                "the data was copied to the {to:?} volume but the master was not told ({e}); the next start copies it again"
            ))
        })?;
    tracing::info!(task = %task.id, ?from, ?to, "data moved to the new volume");
    Ok(())
}

/// Empties `to` and copies everything under `from` into it.
async fn copy_tree(task: &str, from: &Path, to: &Path) -> Result<(), VolumeError> {
    let fail = |message: String| VolumeError::Io {
        task: task.to_owned(),
        message,
    };
    let mut entries = tokio::fs::read_dir(to)
        .await
        .map_err(|e| fail(format!("cannot read {}: {e}", to.display())))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| fail(format!("cannot read {}: {e}", to.display())))?
    {
        let path = entry.path();
        let removed = if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
            tokio::fs::remove_dir_all(&path).await
        } else {
            tokio::fs::remove_file(&path).await
        };
        removed.map_err(|e| fail(format!("cannot empty {}: {e}", path.display())))?;
    }
    // `from/.` copies the directory's contents, hidden files included; -a keeps modes, owners,
    // times and symbolic links as links.
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from.join("."))
        .arg(to)
        .output()
        .await
        .map_err(|e| fail(format!("cannot run cp: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "copying the data from {} to {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
