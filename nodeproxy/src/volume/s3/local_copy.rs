//! The node's copy of a task's volume, `<data dir>/s3/<task id>` (apart from the `local`
//! backend's `volumes/`, so the two kinds never share a directory), and beside it
//! `<task id>.s3-base`: the snapshot key the copy descends from (empty when it started empty
//! or from a seed). The marker exists only while the copy is complete, so an attach can tell
//! a copy that is at least as new as the task's last snapshot (left by a detach that could
//! not reach S3, or by a node restart) from a stale or half-written one, and keep the former
//! instead of restoring an older snapshot over it.
//!
//! Order keeps that true through a crash: the marker goes before the directory is emptied or
//! removed, and comes back only after a restore or commit completed.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

pub struct LocalCopy {
    root: PathBuf,
}

impl LocalCopy {
    /// Copies live in `<data_dir>/volumes`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("s3"),
        }
    }

    pub fn dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }

    fn marker(&self, task_id: &str) -> PathBuf {
        self.root.join(format!("{task_id}.s3-base"))
    }

    /// The snapshot the complete local copy descends from, if there is such a copy.
    pub async fn base(&self, task_id: &str) -> Option<String> {
        let dir_ok = tokio::fs::symlink_metadata(self.dir(task_id))
            .await
            .is_ok_and(|m| m.is_dir());
        if !dir_ok {
            return None;
        }
        tokio::fs::read_to_string(self.marker(task_id)).await.ok()
    }

    /// Records that the local copy is complete and descends from `key`.
    pub async fn set_base(&self, task_id: &str, key: &str) -> io::Result<()> {
        let marker = self.marker(task_id);
        let tmp = self.root.join(format!("{task_id}.s3-base.tmp"));
        tokio::fs::write(&tmp, key).await?;
        tokio::fs::rename(&tmp, &marker).await
    }

    pub async fn clear_base(&self, task_id: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.marker(task_id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Makes the directory anew, empty and open to every user: the app may run as any user
    /// while its capabilities are dropped (no CAP_DAC_OVERRIDE), so root owning the directory
    /// is not enough; the node's data dir guards access from outside.
    pub async fn fresh(&self, task_id: &str) -> io::Result<()> {
        self.clear_base(task_id).await?;
        let dir = self.dir(task_id);
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            remove_any(&dir)?;
            std::fs::create_dir_all(&root)?;
            std::fs::create_dir(&dir)?;
            open_up(&dir)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Opens up an existing copy again (as [`LocalCopy::fresh`] does for a new one).
    pub async fn reopen(&self, task_id: &str) -> io::Result<()> {
        let dir = self.dir(task_id);
        tokio::task::spawn_blocking(move || open_up(&dir))
            .await
            .map_err(io::Error::other)?
    }

    /// Removes the copy and its marker (the data lives in S3 now).
    pub async fn remove(&self, task_id: &str) -> io::Result<()> {
        self.clear_base(task_id).await?;
        let dir = self.dir(task_id);
        tokio::task::spawn_blocking(move || remove_any(&dir))
            .await
            .map_err(io::Error::other)?
    }
}

fn open_up(dir: &Path) -> io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// Removes `path` whatever it is; `remove_dir_all` never follows symlinks.
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_marker_counts_only_with_the_directory() {
        let data = tempfile::tempdir().unwrap();
        let copy = LocalCopy::new(data.path());
        copy.fresh("t").await.unwrap();
        assert_eq!(copy.base("t").await, None);
        copy.set_base("t", "k1").await.unwrap();
        assert_eq!(copy.base("t").await.as_deref(), Some("k1"));
        std::fs::write(copy.dir("t").join("f"), b"x").unwrap();
        copy.fresh("t").await.unwrap();
        assert_eq!(
            copy.base("t").await,
            None,
            "emptying drops the marker first"
        );
        assert_eq!(std::fs::read_dir(copy.dir("t")).unwrap().count(), 0);
        copy.set_base("t", "").await.unwrap();
        assert_eq!(copy.base("t").await.as_deref(), Some(""));
        copy.remove("t").await.unwrap();
        assert!(!copy.dir("t").exists());
        assert_eq!(copy.base("t").await, None);
    }
}
