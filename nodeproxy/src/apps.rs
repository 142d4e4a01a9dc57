//! The apps on this node and each one's life cycle: idle → starting → running → stopping → idle.
//!
//! One [`Slot`] per task guards the state with a short, never-awaited lock. A request for an idle
//! app starts it once; every request arriving meanwhile waits on that same start. A running app
//! hands out [`ActivityToken`]s under the same lock its reaper decides under, so no request is
//! ever sent to a container that is being stopped: it waits for the stop and starts it afresh.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use shadow_common::{follower::Follower, state::ClusterState, status::EffectiveLimits, task::Task};
use tokio::{sync::watch, time::Instant};

use crate::{
    activity::ActivityToken,
    config::NodeConfig,
    lease::{Held, LeaseSession},
    runtime::ContainerRuntime,
    start::{self, Partial, Running, StartError},
    stop,
    volume::Volumes,
};

/// What the start of an app needs, shared by all slots.
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
    pub fence_check: Arc<dyn crate::volume::FenceCheck>,
    /// The master, told when a volume migration is done.
    pub master: shadow_common::client::MasterClient,
    /// Each app's state, reported to the master as it changes.
    pub status: Arc<crate::status::StatusBoard>,
    /// Each app's output, kept after its container is gone.
    pub logs: Arc<crate::logs::LogStore>,
    /// What each app uses, reported to the master hour by hour.
    pub usage: Arc<crate::usage::UsageMeter>,
}

impl AppContext {
    /// The fence for a volume operation under `lease` (none for a task without a lease).
    pub fn fence(&self, lease: Option<&Held>) -> crate::volume::Fence {
        match lease {
            Some(l) => crate::volume::Fence::new(l.token(), self.fence_check.clone()),
            None => crate::volume::Fence::unchecked(0),
        }
    }
}

type StartOutcome = Option<Result<(), Arc<StartError>>>;

enum State {
    Idle,
    Starting(watch::Receiver<StartOutcome>),
    Running(Arc<Running>),
    Stopping(watch::Receiver<bool>),
}

struct Slot {
    state: Mutex<State>,
    /// True while the state is `Idle`, for whoever must wait until the app is fully stopped.
    idle: watch::Sender<bool>,
    /// The failed starts in a row, and how long the next one waits.
    failure: Mutex<Option<Failure>>,
    /// The app's usage counters, bumped by every request it serves.
    meter: Arc<crate::usage::AppMeter>,
}

/// Starts that failed in a row with one spec: requests are refused until `until`.
struct Failure {
    count: u32,
    until: Instant,
    spec: shadow_common::task::TaskSpec,
    error: Arc<StartError>,
}

/// The wait before the next start after `failures` failed ones: 1 s, doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    Duration::from_secs(1)
        .checked_mul(factor)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// The longest wait between two failing starts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Slot {
    /// The back-off the next start of `task` must wait out, if any; a changed spec ends it.
    fn backing_off(&self, task: &Task) -> Option<(Duration, Arc<StartError>)> {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let f = failure.as_ref()?;
        if !f.spec.runs_like(&task.spec) {
            *failure = None;
            return None;
        }
        let left = f.until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| (left, f.error.clone()))
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, st: &mut State, new: State) {
        self.idle.send_replace(matches!(new, State::Idle));
        *st = new;
    }
}

/// Why a request could not be given a running app.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the app did not become ready within its start_timeout_s ({0:?})")]
    StartTimeout(Duration),
    #[error("the app failed to start: {0}")]
    StartFailed(Arc<StartError>),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the app's last start failed; the next is in {wait:?}: {error}")]
    BackingOff {
        wait: Duration,
        error: Arc<StartError>,
    },
}

/// What [`Apps::kick`] did.
pub enum Kick {
    Running,
    Starting,
    BackingOff(Duration, Arc<StartError>),
}

pub struct Apps {
    ctx: Arc<AppContext>,
    /// The runtime starts run on: the one that made `Apps`, not the worker thread of the
    /// request that happened to need the app (workers end with their listener; an app's life
    /// cycle must not).
    spawner: tokio::runtime::Handle,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    shutdown: watch::Sender<bool>,
}

/// Where to send one request, and the token that keeps the app alive until the exchange ends.
pub struct Route {
    pub addr: SocketAddr,
    pub token: ActivityToken,
    /// Where the request and its body bytes are counted.
    pub meter: Arc<crate::usage::AppMeter>,
}

enum Step {
    Wait(watch::Receiver<StartOutcome>),
    WaitStop(watch::Receiver<bool>),
    WaitIdle(watch::Receiver<bool>),
}

impl Apps {
    /// Must be called on the runtime that should run the apps' starts and stops.
    pub fn new(ctx: Arc<AppContext>) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            spawner: tokio::runtime::Handle::current(),
            slots: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
        })
    }

    fn slot(&self, task_id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Every request comes here: look up before `entry`, which needs an owned key.
        if let Some(slot) = slots.get(task_id) {
            return slot.clone();
        }
        slots
            .entry(task_id.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    state: Mutex::new(State::Idle),
                    idle: watch::channel(true).0,
                    failure: Mutex::new(None),
                    meter: self.ctx.usage.app(task_id),
                })
            })
            .clone()
    }

    /// A running app for `task`, starting it if needed; waits at most `start_timeout_s`.
    /// `holder_down` is a node the edge could not reach (see [`start::start`]).
    pub async fn route(
        self: &Arc<Self>,
        task: &Arc<Task>,
        holder_down: Option<&str>,
    ) -> Result<Route, Unavailable> {
        let limit = Duration::from_secs(task.spec.start_timeout_s);
        let deadline = Instant::now() + limit;
        let slot = self.slot(&task.id);
        loop {
            let step = {
                let mut st = slot.lock();
                match &*st {
                    // The same `Arc` (the common case) needs no deep comparison of the specs.
                    State::Running(r)
                        if Arc::ptr_eq(&r.task, task) || r.task.spec.runs_like(&task.spec) =>
                    {
                        self.ctx.status.request(&task.id);
                        slot.meter
                            .requests
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(Route {
                            addr: r.container.host_addr,
                            token: r.activity.enter(),
                            meter: slot.meter.clone(),
                        });
                    }
                    // The task was changed (new image, env...): restart it with the new spec.
                    State::Running(r) => {
                        r.replaced.notify_one();
                        Step::WaitIdle(slot.idle.subscribe())
                    }
                    State::Starting(rx) => Step::Wait(rx.clone()),
                    State::Stopping(rx) => Step::WaitStop(rx.clone()),
                    State::Idle => {
                        if *self.shutdown.borrow() {
                            return Err(Unavailable::ShuttingDown);
                        }
                        if let Some((wait, error)) = slot.backing_off(task) {
                            return Err(Unavailable::BackingOff { wait, error });
                        }
                        let rx = self.spawn_start(
                            slot.clone(),
                            task.clone(),
                            holder_down.map(str::to_string),
                        );
                        slot.set(&mut st, State::Starting(rx.clone()));
                        Step::Wait(rx)
                    }
                }
            };
            match step {
                Step::Wait(mut rx) => {
                    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
                        Err(_) => return Err(Unavailable::StartTimeout(limit)),
                        Ok(Err(_)) => return Err(Unavailable::ShuttingDown),
                        Ok(Ok(outcome)) => {
                            if let Some(Err(e)) = &*outcome {
                                return Err(Unavailable::StartFailed(e.clone()));
                            }
                        }
                    }
                }
                Step::WaitIdle(mut rx) | Step::WaitStop(mut rx) => {
                    if tokio::time::timeout_at(deadline, rx.wait_for(|done| *done))
                        .await
                        .is_err()
                    {
                        return Err(Unavailable::StartTimeout(limit));
                    }
                }
            }
        }
    }

    /// Starts the app in the background if it is idle (for the loading page).
    pub fn kick(self: &Arc<Self>, task: &Arc<Task>) -> Kick {
        let slot = self.slot(&task.id);
        let mut st = slot.lock();
        match &*st {
            State::Running(_) => Kick::Running,
            State::Idle if !*self.shutdown.borrow() => {
                if let Some((wait, error)) = slot.backing_off(task) {
                    return Kick::BackingOff(wait, error);
                }
                let rx = self.spawn_start(slot.clone(), task.clone(), None);
                slot.set(&mut st, State::Starting(rx));
                Kick::Starting
            }
            _ => Kick::Starting,
        }
    }

    /// Stops the app now if it runs here, as its idle timeout would; true if it was running
    /// or starting (a start is let finish, then stopped).
    pub fn sleep(self: &Arc<Self>, task: &str) -> bool {
        let slot = match self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task)
        {
            Some(s) => s.clone(),
            None => return false,
        };
        let st = slot.lock();
        match &*st {
            State::Running(r) => {
                r.put_to_sleep.notify_one();
                true
            }
            State::Starting(rx) => {
                let mut rx = rx.clone();
                drop(st);
                let slot = slot.clone();
                self.spawner.spawn(async move {
                    if let Ok(outcome) = rx.wait_for(Option::is_some).await {
                        if matches!(&*outcome, Some(Ok(()))) {
                            if let State::Running(r) = &*slot.lock() {
                                r.put_to_sleep.notify_one();
                            }
                        }
                    }
                });
                true
            }
            State::Stopping(_) => true,
            State::Idle => false,
        }
    }

    /// Stops every app whose task was deleted or changed on the master, without waiting for its
    /// idle timeout or its next request: a deleted app must not keep running and holding its
    /// volume, and a changed one restarts with its new spec on the next request.
    /// What the node keeps per task (its slot, usage meter, status, request series) goes once
    /// a deleted task's app is stopped, so those maps do not grow with every task ever run.
    pub fn reconcile(&self, state: &ClusterState) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.values() {
            if let State::Running(r) = &*slot.lock() {
                if state
                    .task(&r.task.id)
                    .is_none_or(|t| !t.spec.runs_like(&r.task.spec))
                {
                    r.replaced.notify_one();
                }
            }
        }
        let gone: Vec<String> = slots
            .iter()
            .filter(|(id, slot)| state.task(id).is_none() && matches!(*slot.lock(), State::Idle))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            slots.remove(id);
            self.ctx.usage.forget(id);
            self.ctx.status.forget(id);
        }
        drop(slots);
        if !gone.is_empty() {
            self.ctx.metrics.retain_tasks(|t| state.task(t).is_some());
        }
    }

    /// Reconciles on every change of the node's copy of the master's state, once it is synced;
    /// returns when the follower stops.
    pub async fn follow(self: Arc<Self>, follower: Follower) {
        let mut changes = follower.changes();
        while changes.changed().await.is_ok() {
            if follower.is_synced() {
                self.reconcile(&follower.read());
                self.keep_warm(&follower.read());
            }
        }
    }

    /// Starts the `min_running` apps this node should run: those the edges' rendezvous ranks
    /// this node first for among the healthy nodes, unless another node holds their lease.
    pub fn keep_warm(self: &Arc<Self>, state: &ClusterState) {
        let me = self.ctx.config.node_id.as_str();
        for task in state.tasks().filter(|t| t.spec.min_running) {
            if state.lease(&task.id).is_some_and(|l| l.node != me) {
                continue;
            }
            let first = shadow_common::placement::rendezvous(
                &task.id,
                state
                    .nodes()
                    .filter(|n| n.healthy)
                    .map(|n| (n.id.as_str(), shadow_common::placement::weight(n))),
            )
            .into_iter()
            .next();
            if first.as_deref() == Some(me) {
                let _ = self.kick(task);
            }
        }
    }

    /// The app's status on this node, as reported to the master.
    pub fn status(&self, task: &str) -> Option<shadow_common::status::AppStatus> {
        self.ctx.status.get(task)
    }

    /// Ids of the tasks running here, for heartbeats.
    pub fn running(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|(_, s)| matches!(*s.lock(), State::Running(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The start runs in its own task, so it finishes (or cleans up) even if every waiting
    /// client went away.
    fn spawn_start(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        task: Arc<Task>,
        holder_down: Option<String>,
    ) -> watch::Receiver<StartOutcome> {
        let (tx, rx) = watch::channel(None);
        let apps = self.clone();
        self.spawner.spawn(async move {
            let limit = Duration::from_secs(task.spec.start_timeout_s);
            let partial = Arc::new(Mutex::new(Partial::default()));
            let began = Instant::now();
            let start = start::start(&apps.ctx, &task, &partial, holder_down.as_deref());
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
                    apps.ctx.metrics.cold_start(began.elapsed());
                    *slot.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    let l = start::limits(&apps.ctx.config, &task);
                    apps.ctx.status.running(
                        &task.id,
                        &task.spec.image,
                        running.container.image_digest.clone(),
                        EffectiveLimits {
                            memory_mb: l.memory_mb,
                            cpus: l.cpus,
                            pids: l.pids,
                        },
                    );
                    apps.ctx.usage.started(&task.id, &running.container.id);
                    slot.set(&mut slot.lock(), State::Running(running.clone()));
                    let _ = tx.send(Some(Ok(())));
                    tokio::spawn(apps.clone().supervise(slot, running));
                }
                Err(e) => {
                    let e = Arc::new(e);
                    tracing::error!(task = %task.id, error = %e, "start failed; cleaning up");
                    apps.ctx.metrics.start_failed();
                    let taken =
                        std::mem::take(&mut *partial.lock().unwrap_or_else(|p| p.into_inner()));
                    let logs = match (&*e, &taken.container) {
                        (StartError::Exited { logs, .. }, _)
                        | (
                            StartError::Runtime(crate::runtime::RuntimeError::ExitedAtStart {
                                logs,
                                ..
                            }),
                            _,
                        ) => logs.clone(),
                        (_, Some(c)) => apps.ctx.runtime.logs_tail(c, 20).await.unwrap_or_default(),
                        _ => String::new(),
                    };
                    if let StartError::Runtime(crate::runtime::RuntimeError::ExitedAtStart {
                        name,
                        ..
                    }) = &*e
                    {
                        // Gone before its output could be followed: keep its last lines.
                        let ts = crate::logs::now_rfc3339();
                        for text in logs.lines() {
                            let out = crate::runtime::OutputLine {
                                stderr: false,
                                ts: ts.clone(),
                                text: text.to_owned(),
                            };
                            apps.ctx.logs.append(&task.id, name, &out);
                        }
                    }
                    start::clean_up(&apps.ctx, &task, taken).await;
                    apps.failed(&slot, &task, e.clone(), &logs);
                    slot.set(&mut slot.lock(), State::Idle);
                    let _ = tx.send(Some(Err(e)));
                }
            }
        });
        rx
    }

    /// Watches a running app until it must stop (idle, lease lost or run out, node shutting
    /// down), then stops it.
    async fn supervise(self: Arc<Self>, slot: Arc<Slot>, running: Arc<Running>) {
        let idle = Duration::from_secs(running.task.spec.idle_timeout_s);
        let (done_tx, done_rx) = watch::channel(false);
        let lease_lost = runs_out(running.lease.as_deref());
        tokio::pin!(lease_lost);
        let mut shutdown = self.shutdown.subscribe();
        let every = self.ctx.config.checkpoint_interval();
        // Zero means no checkpoints (the branch is off); an interval must not have a zero period.
        let period = every.max(Duration::from_secs(1));
        let mut checkpoints = tokio::time::interval_at(Instant::now() + period, period);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let checkpointing = !every.is_zero() && running.volume.is_some();
        // Busy-aware idle: CPU time sampled every window counts as activity when high enough.
        let busy_percent = self.ctx.config.busy_cpu_percent;
        let window = self.ctx.config.busy_window().max(crate::busy::MIN_WINDOW);
        let mut busy_ticks = tokio::time::interval_at(Instant::now() + window, window);
        busy_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cpu = if busy_percent > 0.0 {
            self.cpu_sample(&running).await
        } else {
            None
        };
        let reason = loop {
            tokio::select! {
                _ = busy_ticks.tick(), if busy_percent > 0.0 => {
                    let now = self.cpu_sample(&running).await;
                    if let (Some(before), Some(after)) = (cpu, now) {
                        if crate::busy::was_busy(before, after, busy_percent) {
                            running.activity.touch();
                        }
                    }
                    cpu = now.or(cpu);
                }
                _ = checkpoints.tick(), if checkpointing => {
                    // A checkpoint can hang on a blackholed link (its fence asks the master):
                    // the lease's deadline must still win.
                    let saved = tokio::select! {
                        r = checkpoint(&self.ctx, &running) => r,
                        () = runs_out(running.lease.as_deref()) => Err(stop::Reason::LeaseLost),
                    };
                    if let Err(stop) = saved {
                        slot.set(&mut slot.lock(), State::Stopping(done_rx.clone()));
                        break stop;
                    }
                }
                _ = running.replaced.notified() => {
                    slot.set(&mut slot.lock(), State::Stopping(done_rx.clone()));
                    break stop::Reason::Updated;
                }
                _ = running.put_to_sleep.notified() => {
                    slot.set(&mut slot.lock(), State::Stopping(done_rx.clone()));
                    break stop::Reason::Requested;
                }
                () = &mut lease_lost => {
                    slot.set(&mut slot.lock(), State::Stopping(done_rx.clone()));
                    break stop::Reason::LeaseLost;
                }
                _ = until_set(&mut shutdown) => {
                    slot.set(&mut slot.lock(), State::Stopping(done_rx.clone()));
                    break stop::Reason::Shutdown;
                }
                _ = running.activity.idle_for(idle), if !running.task.spec.min_running => {
                    // Decide under the lock that hands out tokens, so no request slips in.
                    let mut st = slot.lock();
                    let still_idle = running
                        .activity
                        .idle_since()
                        .is_some_and(|since| since + idle <= Instant::now());
                    if still_idle {
                        slot.set(&mut st, State::Stopping(done_rx.clone()));
                        break stop::Reason::Idle;
                    }
                }
            }
        };
        self.ctx.status.stopping(&running.task.id);
        if reason != stop::Reason::LeaseLost {
            self.ctx.usage.stopping(&running.task.id).await;
        }
        stop::stop(&self.ctx, &running, reason).await;
        self.ctx.usage.stopped(&running.task.id);
        slot.set(&mut slot.lock(), State::Idle);
        if self.ctx.follower.read().task(&running.task.id).is_some() {
            self.ctx.status.idle(&running.task.id);
        } else {
            // Deleted while it ran: what the node kept for it goes now that it is stopped.
            self.reconcile(&self.ctx.follower.read());
        }
        let _ = done_tx.send(true);
    }

    /// The app's container's CPU time now, if Docker answers.
    async fn cpu_sample(&self, running: &Running) -> Option<crate::busy::Sample> {
        let stats = self.ctx.runtime.stats(&running.container.id).await.ok()?;
        Some(crate::busy::Sample {
            cpu_ns: stats.cpu_ns,
            at: Instant::now(),
        })
    }

    /// Records a failed start: the back-off before the next (for failures of the app's own),
    /// and the status with the reason.
    fn failed(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        task: &Arc<Task>,
        error: Arc<StartError>,
        logs: &str,
    ) {
        if matches!(&*error, StartError::LeaseHeld { .. }) {
            // Not a failure: the app runs on the holder.
            self.ctx.status.idle(&task.id);
            return;
        }
        let lines: Vec<String> = logs.lines().map(str::to_owned).collect();
        if !error.backs_off() {
            self.ctx
                .status
                .failed(&task.id, error.to_string(), lines, 0, None);
            return;
        }
        let count = {
            let mut failure = slot.failure.lock().unwrap_or_else(|e| e.into_inner());
            let count = failure
                .as_ref()
                .filter(|f| f.spec.runs_like(&task.spec))
                .map_or(0, |f| f.count)
                + 1;
            *failure = Some(Failure {
                count,
                until: Instant::now() + backoff(count),
                spec: task.spec.clone(),
                error: error.clone(),
            });
            count
        };
        let wait = backoff(count);
        let until_ms = shadow_common::status::now_ms()
            + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX / 2);
        self.ctx
            .status
            .failed(&task.id, error.to_string(), lines, count, Some(until_ms));
        let (status, id) = (self.ctx.status.clone(), task.id.clone());
        self.spawner.spawn(async move {
            tokio::time::sleep(wait).await;
            status.backoff_over(&id);
        });
    }

    /// Stops every app (persisting its volume) and waits until they are all stopped.
    pub async fn stop_all(&self) {
        self.shutdown.send_replace(true);
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let mut idle = slot.idle.subscribe();
            let _ = idle.wait_for(|i| *i).await;
        }
    }
}

/// Resolves when the app under `lease` must be killed; never for a task without one.
pub(crate) async fn runs_out(lease: Option<&Held>) {
    match lease {
        Some(l) => l.must_stop().await,
        None => std::future::pending().await,
    }
}

/// Saves a running app's volume; a fenced checkpoint means the lease is gone: stop at once.
async fn checkpoint(ctx: &AppContext, running: &Running) -> Result<(), stop::Reason> {
    let Some((backend, attached)) = &running.volume else {
        return Ok(());
    };
    let began = Instant::now();
    match backend
        .checkpoint(
            &running.task,
            attached,
            &ctx.fence(running.lease.as_deref()),
        )
        .await
    {
        Ok(()) => {
            ctx.metrics.phase("checkpoint", began.elapsed());
            Ok(())
        }
        Err(e @ crate::volume::VolumeError::Fenced { .. }) => {
            tracing::error!(task = %running.task.id, error = %e, "checkpoint fenced off; stopping the app at once");
            Err(stop::Reason::LeaseLost)
        }
        Err(e) => {
            tracing::warn!(task = %running.task.id, error = %e, "checkpoint failed; the next one will try again");
            Ok(())
        }
    }
}

/// Waits until the flag is set, without holding the channel's read guard across an await.
async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
