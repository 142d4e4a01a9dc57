//! The apps on this node, as the request path and the node see them: route a request to a
//! running app (starting or thawing it first), start one for the loading page, put one to
//! sleep, stop those whose tasks changed or went, keep `min_running` ones warm, stop all.
//!
//! An app's life: idle → starting → running ⇄ frozen → stopping → idle (see [`super::run`]).
//! A request for an idle app starts it once; every request arriving meanwhile waits on that
//! same start. A running app hands out [`ActivityToken`]s under the same lock its supervisor
//! decides under, so no request is ever sent to a container that is being frozen or stopped:
//! it waits, and thaws it or starts it afresh.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use shadow_common::{follower::Follower, state::ClusterState, task::Task};
use tokio::{sync::watch, time::Instant};

use super::{
    activity::ActivityToken,
    context::AppContext,
    error::StartError,
    run::Shared,
    slot::{Slot, StartOutcome, State},
    start::Running,
};

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
    shared: Arc<Shared>,
}

/// Where to send one request, and the token that keeps the app alive until the exchange ends.
pub struct Route {
    pub addr: SocketAddr,
    pub token: ActivityToken,
    /// Where the request and its body bytes are counted.
    pub meter: Arc<crate::usage::AppMeter>,
}

/// A request routed to the running app `r` of `slot`: counted, and holding it busy.
fn enter(slot: &Slot, r: &Running) -> Route {
    slot.last_request.tick();
    slot.meter
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Route {
        addr: r.container.host_addr,
        token: r.activity.enter(),
        meter: slot.meter.clone(),
    }
}

enum Step {
    WaitStart(watch::Receiver<StartOutcome>),
    WaitChange(watch::Receiver<u64>),
}

impl Apps {
    /// Must be called on the runtime that should run the apps' starts and stops.
    pub fn new(ctx: Arc<AppContext>) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Shared {
                ctx,
                spawner: tokio::runtime::Handle::current(),
                slots: Mutex::default(),
                shutdown: watch::channel(false).0,
            }),
        })
    }

    fn slot(&self, task_id: &str) -> Arc<Slot> {
        let mut slots = self.shared.slots();
        // Every request comes here: look up before `entry`, which needs an owned key.
        if let Some(slot) = slots.get(task_id) {
            return slot.clone();
        }
        slots
            .entry(task_id.to_string())
            .or_insert_with(|| {
                let ctx = &self.shared.ctx;
                Arc::new(Slot::new(
                    ctx.usage.app(task_id),
                    ctx.status.request_clock(task_id),
                ))
            })
            .clone()
    }

    fn existing(&self, task_id: &str) -> Option<Arc<Slot>> {
        self.shared.slots().get(task_id).cloned()
    }

    fn shutting_down(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    /// The route to `task`'s app if it runs here with this spec: the way nearly every request
    /// takes, without building [`Apps::route`]'s future (whose copies showed in the warm
    /// profile) or reading the clock for a deadline it never needs.
    pub fn running_route(&self, task: &Arc<Task>) -> Option<Route> {
        let slot = self.existing(&task.id)?;
        let st = slot.lock();
        match &*st {
            State::Running(r)
                if Arc::ptr_eq(&r.task, task) || r.task.spec.runs_like(&task.spec) =>
            {
                Some(enter(&slot, r))
            }
            _ => None,
        }
    }

    /// A running app for `task`, starting or thawing it if needed; waits at most
    /// `start_timeout_s`. `holder_down` is a node the edge could not reach (see
    /// [`super::start::start`]).
    pub async fn route(
        &self,
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
                        return Ok(enter(&slot, r));
                    }
                    State::Frozen(r) if r.task.spec.runs_like(&task.spec) => {
                        let r = r.clone();
                        r.thaw.notify_one();
                        slot.set(&mut st, State::Thawing(r));
                        Step::WaitChange(slot.next_change())
                    }
                    // The task was changed (new image, env...): restart it with the new spec.
                    State::Running(r) | State::Frozen(r) => {
                        r.replaced.notify_one();
                        Step::WaitChange(slot.next_change())
                    }
                    State::Starting(rx) => Step::WaitStart(rx.clone()),
                    State::Freezing(_) | State::Thawing(_) | State::Stopping => {
                        Step::WaitChange(slot.next_change())
                    }
                    State::Idle => {
                        if self.shutting_down() {
                            return Err(Unavailable::ShuttingDown);
                        }
                        if let Some((wait, error)) = slot.backing_off(task) {
                            return Err(Unavailable::BackingOff { wait, error });
                        }
                        let rx = self.shared.spawn_start(
                            slot.clone(),
                            task.clone(),
                            holder_down.map(str::to_string),
                        );
                        slot.set(&mut st, State::Starting(rx.clone()));
                        Step::WaitStart(rx)
                    }
                }
            };
            match step {
                Step::WaitStart(mut rx) => {
                    // Boxed: the waits are for cold paths, and a large future here is copied
                    // whole into every request's future (memcpy showed in the warm profile).
                    let wait = Box::pin(tokio::time::timeout_at(
                        deadline,
                        rx.wait_for(Option::is_some),
                    ));
                    match wait.await {
                        Err(_) => return Err(Unavailable::StartTimeout(limit)),
                        Ok(Err(_)) => return Err(Unavailable::ShuttingDown),
                        Ok(Ok(outcome)) => {
                            if let Some(Err(e)) = &*outcome {
                                return Err(Unavailable::StartFailed(e.clone()));
                            }
                        }
                    }
                }
                Step::WaitChange(mut rx) => {
                    if Box::pin(tokio::time::timeout_at(deadline, rx.changed()))
                        .await
                        .is_err()
                    {
                        return Err(Unavailable::StartTimeout(limit));
                    }
                }
            }
        }
    }

    /// Starts the app in the background if it is idle, or thaws it if frozen (for the loading
    /// page and `min_running`).
    pub fn kick(&self, task: &Arc<Task>) -> Kick {
        let slot = self.slot(&task.id);
        let mut st = slot.lock();
        match &*st {
            State::Running(_) => Kick::Running,
            State::Frozen(r) => {
                let r = r.clone();
                r.thaw.notify_one();
                slot.set(&mut st, State::Thawing(r));
                Kick::Starting
            }
            State::Idle if !self.shutting_down() => {
                if let Some((wait, error)) = slot.backing_off(task) {
                    return Kick::BackingOff(wait, error);
                }
                let rx = self.shared.spawn_start(slot.clone(), task.clone(), None);
                slot.set(&mut st, State::Starting(rx));
                Kick::Starting
            }
            _ => Kick::Starting,
        }
    }

    /// Stops the app now if it runs here, as its idle timeout would; true if it was running,
    /// frozen or starting (a start is let finish, then stopped).
    pub fn sleep(&self, task: &str) -> bool {
        let Some(slot) = self.existing(task) else {
            return false;
        };
        let st = slot.lock();
        if let Some(r) = st.running() {
            r.put_to_sleep.notify_one();
            return true;
        }
        match &*st {
            State::Starting(rx) => {
                let mut rx = rx.clone();
                drop(st);
                self.shared.spawner.spawn(async move {
                    if let Ok(outcome) = rx.wait_for(Option::is_some).await {
                        if matches!(&*outcome, Some(Ok(()))) {
                            if let Some(r) = slot.lock().running() {
                                r.put_to_sleep.notify_one();
                            }
                        }
                    }
                });
                true
            }
            State::Stopping => true,
            _ => false,
        }
    }

    /// Stops every app whose task was deleted or changed on the master, without waiting for its
    /// idle timeout or its next request: a deleted app must not keep running and holding its
    /// volume, and a changed one restarts with its new spec on the next request.
    /// What the node keeps per task (its slot, usage meter, status, request series) goes once
    /// a deleted task's app is stopped, so those maps do not grow with every task ever run.
    pub fn reconcile(&self, state: &ClusterState) {
        for slot in self.shared.slots().values() {
            if let Some(r) = slot.lock().running() {
                if state
                    .task(&r.task.id)
                    .is_none_or(|t| !t.spec.runs_like(&r.task.spec))
                {
                    r.replaced.notify_one();
                }
            }
        }
        self.shared.forget_deleted(|id| state.task(id).is_some());
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
    pub fn keep_warm(&self, state: &ClusterState) {
        let me = self.shared.ctx.config.node_id.as_str();
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
        self.shared.ctx.status.get(task)
    }

    /// Ids of the tasks that have a container here (running or frozen), for heartbeats.
    pub fn running(&self) -> Vec<String> {
        self.shared
            .slots()
            .iter()
            .filter(|(_, s)| s.lock().running().is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops every app (persisting its volume) and waits until they are all stopped.
    pub async fn stop_all(&self) {
        self.shared.shutdown.send_replace(true);
        let slots: Vec<Arc<Slot>> = self.shared.slots().values().cloned().collect();
        for slot in slots {
            let mut idle = slot.idle.subscribe();
            let _ = idle.wait_for(|i| *i).await;
        }
    }
}
