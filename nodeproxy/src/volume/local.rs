//! The `local` backend: a directory under the node's data dir, for development and single nodes.

use std::path::PathBuf;

use async_trait::async_trait;
use shadow_common::task::Task;

use super::{Attached, Fence, VolumeBackend, VolumeError};

pub struct LocalVolumes {
    root: PathBuf,
}

impl LocalVolumes {
    /// Volumes live in `<data_dir>/volumes/<task id>`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self {
            root: data_dir.join("volumes"),
        }
    }
}

#[async_trait]
impl VolumeBackend for LocalVolumes {
    async fn attach(&self, task: &Task, _fence: &Fence) -> Result<Attached, VolumeError> {
        let dir = self.root.join(&task.id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| VolumeError::Io {
                task: task.id.clone(),
                message: format!(
                    "cannot create {}: {e}; check the node's data dir",
                    dir.display()
                ),
            })?;
        // The app may run as any user while its capabilities are dropped (no CAP_DAC_OVERRIDE), so
        // root owning the directory is not enough; the node's data dir guards access from outside.
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .await
            .map_err(|e| VolumeError::Io {
                task: task.id.clone(),
                message: format!("cannot open up {}: {e}", dir.display()),
            })?;
        // Docker needs an absolute path for a bind mount.
        let host_path = tokio::fs::canonicalize(&dir)
            .await
            .map_err(|e| VolumeError::Io {
                task: task.id.clone(),
                message: format!("cannot resolve {}: {e}", dir.display()),
            })?;
        Ok(Attached::dir(host_path))
    }

    async fn detach(
        &self,
        _task: &Task,
        _attached: &Attached,
        _fence: &Fence,
    ) -> Result<(), VolumeError> {
        Ok(())
    }
}
