//! What every step of an app's life needs, shared by all the node's apps: the container runtime,
//! the volume backends, the lease session, the node's copy of the master's state, and where
//! status, logs, usage and metrics go.

use std::{sync::Arc, time::Duration};

use shadow_common::{follower::Follower, task::Task};

use crate::{
    config::NodeConfig,
    lease::{Held, LeaseSession},
    runtime::ContainerRuntime,
    volume::{Fence, FenceCheck, Volumes},
};

pub struct AppContext {
    pub config: Arc<NodeConfig>,
    /// What the running apps' memory limits may add up to.
    pub budget: Arc<crate::budget::MemoryBudget>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub volumes: Volumes,
    pub metrics: crate::metrics::Metrics,
    /// The node's leases, renewed together.
    pub leases: Arc<LeaseSession>,
    /// The node's copy of the master's state (a start waits on it for a lease to lapse).
    pub follower: Follower,
    /// Asks the master whether a lease token is still current, right before a volume commit.
    pub fence_check: Arc<dyn FenceCheck>,
    /// The master, told when a volume migration is done.
    pub master: shadow_common::client::MasterClient,
    /// Each app's state, reported to the master as it changes.
    pub status: Arc<crate::status::StatusBoard>,
    /// Each app's output, kept after its container is gone.
    pub logs: Arc<crate::logs::LogStore>,
    /// What each app uses, reported to the master hour by hour.
    pub usage: Arc<crate::usage::UsageMeter>,
    /// Network namespaces made ahead for cold starts.
    pub sandboxes: Arc<super::sandbox::SandboxPool>,
}

impl AppContext {
    /// The fence for a volume operation under `lease` (none for a task without a lease).
    pub fn fence(&self, lease: Option<&Held>) -> Fence {
        match lease {
            Some(l) => Fence::new(l.token(), self.fence_check.clone()),
            None => Fence::unchecked(0),
        }
    }

    /// Kills and removes a container at once (no grace).
    pub async fn kill(&self, task: &Task, container: &str) {
        if let Err(e) = self
            .runtime
            .stop_and_remove(container, Duration::ZERO)
            .await
        {
            tracing::error!(task = %task.id, %container, error = %e, "cannot remove the app's container");
        }
    }
}
