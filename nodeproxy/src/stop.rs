//! Stopping a running app: container, then volume, then lease, in that order, so the data is
//! written back before anyone else may take it.

use std::time::Duration;

use shadow_common::{client::ClientError, task::Task};

use crate::{
    apps::AppContext,
    start::Running,
    volume::{Attached, VolumeBackend, VolumeError},
};

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub enum Reason {
    Idle,
    LeaseLost,
    Shutdown,
    /// The task's spec changed (it restarts with the new one on its next request), or the task
    /// was deleted.
    Updated,
}

pub async fn stop(ctx: &AppContext, running: &Running, reason: Reason) {
    let task: &Task = &running.task;
    // A node that lost its lease must stop writing at once: no grace period.
    let grace = match reason {
        Reason::LeaseLost => std::time::Duration::ZERO,
        _ => ctx.config.stop_grace(),
    };
    tracing::info!(task = %task.id, container = %running.container.name, ?reason, "stopping app");
    if let Err(e) = ctx
        .runtime
        .stop_and_remove(&running.container.id, grace)
        .await
    {
        tracing::error!(task = %task.id, error = %e, "cannot stop the app's container");
    }
    let mut keep_lease = matches!(reason, Reason::LeaseLost);
    if let Some((backend, attached)) = &running.volume {
        if matches!(reason, Reason::LeaseLost) {
            tracing::warn!(task = %task.id, "lease lost: not writing the volume back over a newer holder's");
            if let Err(e) = backend.abandon(task, attached).await {
                tracing::error!(task = %task.id, error = %e, "cannot let go of the volume's local state");
            }
        } else if !detach_until_done(ctx, running, backend.as_ref(), attached).await {
            keep_lease = true;
        }
    }
    if let (Some(token), false) = (running.lease, keep_lease) {
        if let Err(e) = ctx.master.release_lease(&task.id, token).await {
            tracing::warn!(task = %task.id, error = %e, "cannot release the lease; it will lapse by itself");
        }
    }
    ctx.metrics.stopped();
}

/// Detaches, retrying with backoff while keeping the lease alive, so the data is never left
/// half-written for another node to take. Gives up only when the lease is lost (someone else
/// holds it now) or the detach was fenced off; returns whether the volume was let go cleanly.
async fn detach_until_done(
    ctx: &AppContext,
    running: &Running,
    backend: &dyn VolumeBackend,
    attached: &Attached,
) -> bool {
    let task = &running.task;
    let mut wait = RETRY_FIRST;
    loop {
        let fence = ctx.fence(running.lease);
        let detach = backend.detach(task, attached, &fence);
        match fence.keeping(&task.id, ctx.renew_every(), detach).await {
            Ok(()) => return true,
            Err(e @ VolumeError::Fenced { .. }) => {
                tracing::error!(task = %task.id, error = %e, "detach fenced off: a newer holder exists; leaving the data");
                return false;
            }
            Err(e) => {
                tracing::error!(task = %task.id, error = %e, retry_in_s = wait.as_secs(), "cannot detach the volume; keeping the lease and retrying");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
        if let Some(token) = running.lease {
            match ctx
                .master
                .renew_lease(&task.id, token, ctx.config.lease_ttl())
                .await
            {
                Ok(_) => {}
                Err(ClientError::LeaseConflict { message, .. }) => {
                    tracing::error!(task = %task.id, %message, "lease lost while retrying the detach; leaving the data");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "cannot renew the lease while retrying the detach")
                }
            }
        }
    }
}
