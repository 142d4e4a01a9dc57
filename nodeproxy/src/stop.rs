//! Stopping a running app: container, then volume, then lease, in that order, so the data is
//! written back before anyone else may take it.
//!
//! Every step races the lease: if it runs out (a renewal did not get through in time) or is
//! lost, the container is killed at once and the volume is let go of without a write-back.

use std::time::Duration;

use shadow_common::task::Task;

use crate::{
    apps::{runs_out, AppContext},
    start::{self, Running},
    volume::{Attached, VolumeBackend, VolumeError},
};

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Idle,
    LeaseLost,
    Shutdown,
    /// The task's spec changed (it restarts with the new one on its next request), or the task
    /// was deleted.
    Updated,
    /// Someone asked it to sleep (`POST /tasks/{id}/sleep`).
    Requested,
}

pub async fn stop(ctx: &AppContext, running: &Running, reason: Reason) {
    let task: &Task = &running.task;
    let lease = running.lease.as_deref();
    let container = &running.container.id;
    tracing::info!(task = %task.id, container = %running.container.name, ?reason, "stopping app");
    let mut lost = matches!(reason, Reason::LeaseLost) || lease.is_some_and(|l| !l.is_valid());
    if lost {
        // No grace: a node that lost its lease must stop writing at once.
        start::kill(ctx, task, container).await;
    } else {
        let graceful = ctx
            .runtime
            .stop_and_remove(container, ctx.config.stop_grace());
        let result = match lease {
            Some(l) => tokio::select! {
                r = graceful => r,
                () = l.must_stop() => {
                    tracing::error!(task = %task.id, "the lease ran out during the stop; killing the app");
                    start::kill(ctx, task, container).await;
                    lost = true;
                    Ok(())
                }
            },
            None => graceful.await,
        };
        if let Err(e) = result {
            tracing::error!(task = %task.id, error = %e, "cannot stop the app's container");
        }
    }
    let mut keep_lease = lost;
    if let Some((backend, attached)) = &running.volume {
        if !lost && !detach_until_done(ctx, running, backend.as_ref(), attached).await {
            lost = lease.is_some_and(|l| !l.is_valid());
            keep_lease = true;
        }
        if lost {
            tracing::warn!(task = %task.id, "lease lost: not writing the volume back over a newer holder's");
            if let Err(e) = backend.abandon(task, attached).await {
                tracing::error!(task = %task.id, error = %e, "cannot let go of the volume's local state");
            }
        }
    }
    if let (Some(l), false) = (lease, keep_lease) {
        if let Err(e) = l.release().await {
            tracing::warn!(task = %task.id, error = %e, "cannot release the lease; it will lapse by itself");
        }
    }
    ctx.metrics.stopped();
}

/// Detaches, retrying with backoff while the session keeps the lease alive, so the data is never
/// left half-written for another node to take. Gives up only when the lease runs out or is lost
/// (someone else may hold it now) or the detach was fenced off; returns whether the volume was
/// let go of cleanly.
async fn detach_until_done(
    ctx: &AppContext,
    running: &Running,
    backend: &dyn VolumeBackend,
    attached: &Attached,
) -> bool {
    let task = &running.task;
    let lease = running.lease.as_deref();
    let mut wait = RETRY_FIRST;
    loop {
        let fence = ctx.fence(lease);
        let result = tokio::select! {
            r = backend.detach(task, attached, &fence) => r,
            () = runs_out(lease) => {
                tracing::error!(task = %task.id, "the lease ran out during the detach; leaving the data");
                return false;
            }
        };
        match result {
            Ok(()) => return true,
            Err(e @ VolumeError::Fenced { .. }) => {
                tracing::error!(task = %task.id, error = %e, "detach fenced off: a newer holder exists; leaving the data");
                return false;
            }
            Err(e) => {
                tracing::error!(task = %task.id, error = %e, retry_in_s = wait.as_secs(), "cannot detach the volume; keeping the lease and retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = runs_out(lease) => {
                tracing::error!(task = %task.id, "the lease ran out while retrying the detach; leaving the data");
                return false;
            }
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}
