//! One run of an app, from its start to its stop: the start in its own task, then a supervisor
//! that keeps it running while it is used, freezes it when idle, thaws it for a request, and
//! stops it when it must (idle too long, lease lost, memory needed, spec changed, node
//! stopping). The supervisor is the only one that acts on the container; requests and the node
//! only change the slot's state or signal it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use shadow_common::{status::EffectiveLimits, task::Task};
use tokio::{sync::watch, time::Instant};

use super::{
    context::AppContext,
    error::StartError,
    freeze,
    keepalive::runs_out,
    slot::{Slot, StartOutcome, State},
    start::{self, Partial, Running},
    stop::{self, Reason},
};
use crate::budget::Reservation;

/// What the node's app runs share.
pub struct Shared {
    pub ctx: Arc<AppContext>,
    /// The runtime starts run on: the one that made the apps, not the worker thread of the
    /// request that happened to need the app (workers end with their listener; an app's life
    /// cycle must not).
    pub spawner: tokio::runtime::Handle,
    pub slots: Mutex<foldhash::HashMap<String, Arc<Slot>>>,
    pub shutdown: watch::Sender<bool>,
}

/// What comes after a phase of a supervised run.
enum Next {
    /// Idle: freeze it.
    Freeze,
    /// A request thawed it: it runs again.
    Thawed,
    Stop {
        reason: Reason,
        paused: bool,
    },
}

impl Shared {
    pub fn slots(&self) -> std::sync::MutexGuard<'_, foldhash::HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what the node kept for tasks deleted on the master whose apps are stopped, so
    /// the maps do not grow with every task ever run.
    pub fn forget_deleted(&self, exists: impl Fn(&str) -> bool) {
        let mut slots = self.slots();
        let gone: Vec<String> = slots
            .iter()
            .filter(|(id, slot)| !exists(id) && matches!(*slot.lock(), State::Idle))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            slots.remove(id);
            self.ctx.usage.forget(id);
            self.ctx.status.forget(id);
        }
        drop(slots);
        if !gone.is_empty() {
            self.ctx.metrics.retain_tasks(exists);
        }
    }

    /// Starts the app in its own task, so it finishes (or cleans up) even if every waiting
    /// client went away; the caller has set the slot to `Starting` with the answered receiver.
    pub fn spawn_start(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        task: Arc<Task>,
        holder_down: Option<String>,
    ) -> watch::Receiver<StartOutcome> {
        let (tx, rx) = watch::channel(None);
        let shared = self.clone();
        self.spawner.spawn(async move {
            let limit = Duration::from_secs(task.spec.start_timeout_s);
            let partial = Arc::new(Mutex::new(Partial::default()));
            let began = Instant::now();
            let start = async {
                // Cheapest checks first, before anything is taken: a refused start changes
                // nothing.
                start::check_policy(&shared.ctx.config, &task)?;
                let memory = shared.reserve(&task).await?;
                start::start(&shared.ctx, &task, &partial, holder_down.as_deref(), memory).await
            };
            let result = match tokio::time::timeout(limit, start).await {
                Ok(r) => r,
                Err(_) => Err(StartError::Timeout {
                    limit,
                    port: task.spec.port,
                }),
            };
            match result {
                Ok(running) => {
                    let running = Arc::new(running);
                    shared.started(&slot, &running, began.elapsed());
                    let _ = tx.send(Some(Ok(())));
                    tokio::spawn(shared.clone().supervise(slot, running));
                }
                Err(e) => {
                    let e = Arc::new(e);
                    let taken =
                        std::mem::take(&mut *partial.lock().unwrap_or_else(|p| p.into_inner()));
                    shared.start_failed(&slot, &task, &e, taken).await;
                    let _ = tx.send(Some(Err(e)));
                }
            }
        });
        rx
    }

    fn started(&self, slot: &Slot, running: &Arc<Running>, took: Duration) {
        let (ctx, task) = (&self.ctx, &running.task);
        ctx.metrics.cold_start(took);
        slot.succeeded();
        let l = start::limits(&ctx.config, task);
        ctx.status.running(
            &task.id,
            &task.spec.image,
            running.container.image_digest.clone(),
            EffectiveLimits {
                memory_mb: l.memory_mb,
                cpus: l.cpus,
                pids: l.pids,
            },
        );
        ctx.usage.started(&task.id, &running.container.id);
        slot.set_now(State::Running(running.clone()));
    }

    /// Undoes a failed start, keeps the app's last lines, and records the failure.
    async fn start_failed(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        task: &Arc<Task>,
        e: &Arc<StartError>,
        taken: Partial,
    ) {
        let ctx = &self.ctx;
        tracing::error!(task = %task.id, error = %e, "start failed; cleaning up");
        ctx.metrics.start_failed();
        let logs = match (e.logs(), &taken.container) {
            (Some(logs), _) => logs.to_owned(),
            (None, Some(c)) => ctx.runtime.logs_tail(c, 20).await.unwrap_or_default(),
            (None, None) => String::new(),
        };
        if let StartError::Runtime(crate::runtime::RuntimeError::ExitedAtStart { name, .. }) = &**e
        {
            // Gone before its output could be followed: keep its last lines.
            let ts = crate::logs::now_rfc3339();
            for text in logs.lines() {
                let out = crate::runtime::OutputLine {
                    stderr: false,
                    ts: ts.clone(),
                    text: text.to_owned(),
                };
                ctx.logs.append(&task.id, name, &out);
            }
        }
        start::clean_up(ctx, task, taken).await;
        self.record_failure(slot, task, e.clone(), &logs);
        slot.set_now(State::Idle);
    }

    /// The app's share of the node's memory budget. When the budget is used up but frozen apps
    /// hold enough of it, they are stopped, least recently used first, until the share fits.
    async fn reserve(&self, task: &Task) -> Result<Reservation, StartError> {
        let want = start::limits(&self.ctx.config, task).memory_mb;
        loop {
            let refused = match self.ctx.budget.reserve(want) {
                Ok(r) => return Ok(r),
                Err(refused) => refused,
            };
            let frozen = self.frozen_by_age(&task.id);
            let freeable: u64 = frozen.iter().map(|(_, _, mb)| mb).sum();
            if refused.used_mb.saturating_sub(freeable) + want > refused.total_mb {
                return Err(refused.into());
            }
            let Some((slot, victim, _)) = frozen.into_iter().next() else {
                return Err(refused.into());
            };
            let mut changed = {
                let st = slot.lock();
                if !matches!(&*st, State::Frozen(r) if Arc::ptr_eq(r, &victim)) {
                    continue;
                }
                tracing::info!(task = %task.id, evicted = %victim.task.id, "the node's memory budget is used up; stopping the least recently used frozen app");
                victim.evict.notify_one();
                slot.next_change()
            };
            // The victim's slot moves on (stopping, or thawed by a request of its own): look
            // again once it has. The start's own timeout bounds the wait.
            let _ = changed.changed().await;
            let mut idle = slot.idle.subscribe();
            if matches!(*slot.lock(), State::Stopping) {
                let _ = idle.wait_for(|i| *i).await;
            }
        }
    }

    /// The frozen apps other than `except`, least recently used first, with their memory.
    fn frozen_by_age(&self, except: &str) -> Vec<(Arc<Slot>, Arc<Running>, u64)> {
        let mut frozen: Vec<_> = self
            .slots()
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .filter_map(|(_, slot)| match &*slot.lock() {
                State::Frozen(r) => {
                    let mb = r.memory_mb();
                    Some((slot.clone(), r.clone(), mb))
                }
                _ => None,
            })
            .collect();
        frozen.sort_by_key(|(_, r, _)| r.activity.idle_since());
        frozen
    }

    /// Watches a running app until it must stop, freezing and thawing it meanwhile, then stops
    /// it.
    async fn supervise(self: Arc<Self>, slot: Arc<Slot>, running: Arc<Running>) {
        let ctx = &self.ctx;
        let frozen_for = ctx.config.frozen_timeout(&running.task);
        let (reason, paused) = loop {
            if let Next::Stop { reason, paused } = self
                .while_running(&slot, &running, !frozen_for.is_zero())
                .await
            {
                break (reason, paused);
            }
            if let Err(not) = freeze::freeze(ctx, &running).await {
                slot.set_now(State::Stopping);
                break (not.stop, not.paused);
            }
            {
                // Wake-ups left from an earlier freeze must not end this one; nobody sends new
                // ones before the slot is `Frozen`.
                drain(&running.thaw);
                drain(&running.evict);
                let mut st = slot.lock();
                if matches!(*st, State::Freezing(_)) {
                    slot.set(&mut st, State::Frozen(running.clone()));
                }
            }
            ctx.status.frozen(&running.task.id);
            ctx.usage.frozen(&running.task.id, true);
            let next = self.while_frozen(&slot, &running, frozen_for).await;
            ctx.usage.frozen(&running.task.id, false);
            match next {
                Next::Stop { reason, paused } => break (reason, paused),
                Next::Thawed | Next::Freeze => ctx.status.thawed(&running.task.id),
            }
        };
        ctx.status.stopping(&running.task.id);
        if paused && reason != Reason::LeaseLost {
            // A paused app cannot act on SIGTERM: thaw it so it shuts down in its grace time.
            if let Err(e) = ctx.runtime.unpause(&running.container.id).await {
                tracing::warn!(task = %running.task.id, error = %e, "cannot thaw the app for its stop");
            }
        }
        if reason != Reason::LeaseLost {
            ctx.usage.stopping(&running.task.id).await;
        }
        stop::stop(ctx, &running, reason).await;
        ctx.usage.stopped(&running.task.id);
        slot.set_now(State::Idle);
        if ctx.follower.read().task(&running.task.id).is_some() {
            ctx.status.idle(&running.task.id);
        } else {
            // Deleted while it ran: what the node kept for it goes now that it is stopped.
            let state = ctx.follower.read();
            self.forget_deleted(|id| state.task(id).is_some());
        }
    }

    /// The running app, until it is idle (then [`Next::Freeze`] if `may_freeze`, with the slot
    /// `Freezing`) or must stop (the slot `Stopping`).
    async fn while_running(&self, slot: &Slot, running: &Arc<Running>, may_freeze: bool) -> Next {
        let ctx = &self.ctx;
        let idle = Duration::from_secs(running.task.spec.idle_timeout_s);
        let lease_lost = runs_out(running.lease.as_deref());
        tokio::pin!(lease_lost);
        let mut shutdown = self.shutdown.subscribe();
        let every = ctx.config.checkpoint_interval();
        // Zero means no checkpoints (the branch is off); an interval must not have a zero period.
        let period = every.max(Duration::from_secs(1));
        let mut checkpoints = tokio::time::interval_at(Instant::now() + period, period);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checkpointing = !every.is_zero() && running.volume.is_some();
        // Busy-aware idle: CPU time sampled every window counts as activity when high enough.
        let busy_percent = ctx.config.busy_cpu_percent;
        let _busy = (busy_percent > 0.0).then(|| {
            AbortOnDrop(tokio::spawn(super::busy::watch(
                ctx.runtime.clone(),
                running.container.id.clone(),
                running.activity.clone(),
                ctx.config.busy_window(),
                busy_percent,
            )))
        });
        let stop = |reason| {
            slot.set_now(State::Stopping);
            Next::Stop {
                reason,
                paused: false,
            }
        };
        loop {
            tokio::select! {
                _ = checkpoints.tick(), if checkpointing => {
                    // A failed checkpoint is tried again at the next tick; a fenced one stops.
                    if freeze::checkpoint(ctx, running).await == Err(Reason::LeaseLost) {
                        return stop(Reason::LeaseLost);
                    }
                }
                _ = running.replaced.notified() => return stop(Reason::Updated),
                _ = running.put_to_sleep.notified() => return stop(Reason::Requested),
                () = &mut lease_lost => return stop(Reason::LeaseLost),
                _ = until_set(&mut shutdown) => return stop(Reason::Shutdown),
                _ = running.activity.idle_for(idle), if !running.task.spec.min_running => {
                    // Decide under the lock that hands out tokens, so no request slips in.
                    let mut st = slot.lock();
                    let still_idle = running
                        .activity
                        .idle_since()
                        .is_some_and(|since| since + idle <= Instant::now());
                    if still_idle {
                        if may_freeze {
                            slot.set(&mut st, State::Freezing(running.clone()));
                            return Next::Freeze;
                        }
                        slot.set(&mut st, State::Stopping);
                        return Next::Stop { reason: Reason::Idle, paused: false };
                    }
                }
            }
        }
    }

    /// The frozen app, until a request thaws it ([`Next::Thawed`]: it runs again, the slot
    /// `Running`) or it must stop (the slot `Stopping`; the container still paused).
    async fn while_frozen(
        &self,
        slot: &Slot,
        running: &Arc<Running>,
        frozen_for: Duration,
    ) -> Next {
        let ctx = &self.ctx;
        let lease_lost = runs_out(running.lease.as_deref());
        tokio::pin!(lease_lost);
        let mut shutdown = self.shutdown.subscribe();
        let expiry = tokio::time::sleep(frozen_for);
        tokio::pin!(expiry);
        let stop = |reason| {
            slot.set_now(State::Stopping);
            Next::Stop {
                reason,
                paused: true,
            }
        };
        loop {
            // Thaw, timeout and eviction decide under the lock: a request may have begun a thaw
            // (the slot is `Thawing`) whatever woke this one.
            let wanted = tokio::select! {
                _ = running.thaw.notified() => None,
                () = &mut expiry => Some(Reason::Idle),
                _ = running.evict.notified() => Some(Reason::Evicted),
                _ = running.replaced.notified() => return stop(Reason::Updated),
                _ = running.put_to_sleep.notified() => return stop(Reason::Requested),
                () = &mut lease_lost => return stop(Reason::LeaseLost),
                _ = until_set(&mut shutdown) => return stop(Reason::Shutdown),
            };
            {
                let mut st = slot.lock();
                match (&*st, wanted) {
                    (State::Thawing(_), _) => {}
                    (_, Some(reason)) => {
                        slot.set(&mut st, State::Stopping);
                        return Next::Stop {
                            reason,
                            paused: true,
                        };
                    }
                    // A wake-up left over from an earlier thaw: still frozen, nobody waiting.
                    (_, None) => continue,
                }
            }
            return match freeze::thaw(ctx, running).await {
                Ok(()) => {
                    slot.set_now(State::Running(running.clone()));
                    Next::Thawed
                }
                Err(e) => {
                    tracing::error!(task = %running.task.id, error = %e, "cannot thaw the app; stopping it");
                    stop(Reason::Idle)
                }
            };
        }
    }

    /// Records a failed start: the back-off before the next (for failures of the app's own),
    /// and the status with the reason.
    fn record_failure(&self, slot: &Slot, task: &Task, error: Arc<StartError>, logs: &str) {
        let status = &self.ctx.status;
        if matches!(&*error, StartError::LeaseHeld { .. }) {
            // Not a failure: the app runs on the holder.
            status.idle(&task.id);
            return;
        }
        let lines: Vec<String> = logs.lines().map(str::to_owned).collect();
        if !error.backs_off() {
            status.failed(&task.id, error.to_string(), lines, 0, None);
            return;
        }
        let count = slot.failed(task, error.clone());
        let wait = super::slot::backoff(count);
        let until_ms = shadow_common::status::now_ms()
            + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX / 2);
        status.failed(&task.id, error.to_string(), lines, count, Some(until_ms));
        let (status, id) = (status.clone(), task.id.clone());
        self.spawner.spawn(async move {
            tokio::time::sleep(wait).await;
            status.backoff_over(&id);
        });
    }
}

/// Ends a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes a wake-up `n` may have stored for nobody.
fn drain(n: &tokio::sync::Notify) {
    let notified = std::pin::pin!(n.notified());
    notified.enable();
}

/// Waits until the flag is set, without holding the channel's read guard across an await.
async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
