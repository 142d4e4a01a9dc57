//! Stopping a running app: container, then volume, then lease, in that order, so the data is
//! written back before anyone else may take it.
//!
//! Every step races the lease: if it runs out (a renewal did not get through in time) or is
//! lost, the container is killed at once and the volume is let go of without a write-back.

use std::time::Duration;

use shadow_common::{backoff::Backoff, task::Task};

use super::{
    context::AppContext,
    keepalive::{under_lease, RanOut},
    start::Running,
};
use crate::volume::{Attached, VolumeBackend, VolumeError};

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
    /// It was frozen, and a start on this node needed its memory.
    Evicted,
}

pub async fn stop(ctx: &AppContext, running: &Running, reason: Reason) {
    let task: &Task = &running.task;
    let lease = running.lease.as_deref();
    let container = &running.container.id;
    tracing::info!(task = %task.id, container = %running.container.name, ?reason, "stopping app");
    let mut lost = matches!(reason, Reason::LeaseLost) || lease.is_some_and(|l| !l.is_valid());
    if lost {
        // No grace: a node that lost its lease must stop writing at once.
        ctx.kill(task, container).await;
    } else {
        let graceful = ctx
            .runtime
            .stop_and_remove(container, ctx.config.stop_grace());
        let result = match under_lease(lease, graceful).await {
            Ok(r) => r,
            Err(RanOut) => {
                tracing::error!(task = %task.id, "the lease ran out during the stop; killing the app");
                ctx.kill(task, container).await;
                lost = true;
                Ok(())
            }
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
    if let Some(sandbox) = &running.sandbox {
        // One app run per sandbox: namespaces are never shared, not even one after the other.
        ctx.sandboxes.discard(sandbox).await;
    }
    running.release_memory();
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
    let mut waits = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let fence = ctx.fence(lease);
        let Ok(result) = under_lease(lease, backend.detach(task, attached, &fence)).await else {
            tracing::error!(task = %task.id, "the lease ran out during the detach; leaving the data");
            return false;
        };
        match result {
            Ok(()) => return true,
            Err(e @ VolumeError::Fenced { .. }) => {
                tracing::error!(task = %task.id, error = %e, "detach fenced off: a newer holder exists; leaving the data");
                return false;
            }
            Err(e) => {
                tracing::error!(task = %task.id, error = %e, retry_in_s = waits.peek().as_secs(), "cannot detach the volume; keeping the lease and retrying");
            }
        }
        if under_lease(lease, tokio::time::sleep(waits.next_delay())).await == Err(RanOut) {
            tracing::error!(task = %task.id, "the lease ran out while retrying the detach; leaving the data");
            return false;
        }
    }
}
