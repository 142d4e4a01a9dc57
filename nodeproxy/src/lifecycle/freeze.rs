//! The frozen tier, between running and stopped: an app idle past its `idle_timeout_s` is
//! paused (the cgroup freezer: no CPU, memory kept, lease kept) and its volume checkpointed, so
//! the next request thaws it in milliseconds instead of starting it cold, and losing the node
//! loses nothing written before the freeze. After `frozen_timeout_s`, or when a start needs its
//! memory, it is stopped as before.

use tokio::time::Instant;

use super::{
    context::AppContext,
    keepalive::{under_lease, RanOut},
    start::Running,
    stop::Reason,
};
use crate::{runtime::RuntimeError, volume::VolumeError};

/// Why an app could not be frozen; it is stopped instead, for the reason given.
#[derive(Debug)]
pub struct NotFrozen {
    pub stop: Reason,
    /// Whether the container is paused (and must be thawed before a graceful stop).
    pub paused: bool,
}

/// Pauses the app and checkpoints its volume. A checkpoint that fails leaves data the node
/// alone holds, which a frozen app must not: it is stopped instead, writing the volume back.
pub async fn freeze(ctx: &AppContext, running: &Running) -> Result<(), NotFrozen> {
    let task = &running.task;
    let began = Instant::now();
    if let Err(e) = ctx.runtime.pause(&running.container.id).await {
        tracing::warn!(task = %task.id, error = %e, "cannot pause the app; stopping it instead");
        return Err(NotFrozen {
            stop: Reason::Idle,
            paused: false,
        });
    }
    ctx.metrics.phase("pause", began.elapsed());
    match checkpoint(ctx, running).await {
        Ok(()) => {
            ctx.metrics.phase("freeze", began.elapsed());
            tracing::info!(task = %task.id, ms = began.elapsed().as_millis() as u64, "app frozen");
            Ok(())
        }
        Err(Reason::LeaseLost) => Err(NotFrozen {
            stop: Reason::LeaseLost,
            paused: true,
        }),
        Err(_) => {
            tracing::warn!(task = %task.id, "the checkpoint at freeze failed; stopping the app instead, writing its volume back");
            Err(NotFrozen {
                stop: Reason::Idle,
                paused: true,
            })
        }
    }
}

/// Thaws a frozen app.
pub async fn thaw(ctx: &AppContext, running: &Running) -> Result<(), RuntimeError> {
    let began = Instant::now();
    ctx.runtime.unpause(&running.container.id).await?;
    ctx.metrics.phase("thaw", began.elapsed());
    // The idle timer starts again from the thaw, not from before the freeze.
    running.activity.touch();
    Ok(())
}

/// Saves a running (or paused) app's volume under its lease. A fenced checkpoint, or a lease
/// that ran out meanwhile, means another node may hold the volume: stop at once
/// ([`Reason::LeaseLost`]). Any other failure is [`Reason::Idle`]: the caller decides whether
/// to try again later or stop.
pub async fn checkpoint(ctx: &AppContext, running: &Running) -> Result<(), Reason> {
    let Some((backend, attached)) = &running.volume else {
        return Ok(());
    };
    let began = Instant::now();
    let lease = running.lease.as_deref();
    let fence = ctx.fence(lease);
    // A checkpoint can hang on a blackholed link (its fence asks the master): the lease's
    // deadline must still win.
    match under_lease(lease, backend.checkpoint(&running.task, attached, &fence)).await {
        Err(RanOut) => Err(Reason::LeaseLost),
        Ok(Ok(())) => {
            ctx.metrics.phase("checkpoint", began.elapsed());
            Ok(())
        }
        Ok(Err(e @ VolumeError::Fenced { .. })) => {
            tracing::error!(task = %running.task.id, error = %e, "checkpoint fenced off; stopping the app at once");
            Err(Reason::LeaseLost)
        }
        Ok(Err(e)) => {
            tracing::warn!(task = %running.task.id, error = %e, "checkpoint failed");
            Err(Reason::Idle)
        }
    }
}
