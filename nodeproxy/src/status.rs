//! The node's record of each app's state, and its reports to the master as they change.
//!
//! Every change of state (a start's phases, running, stopping, idle, a failure and its
//! back-off) marks the app dirty and wakes the reporter, which sends the newest status of each
//! dirty app (`PUT /nodes/{node}/apps/{task}`): a burst of changes costs one call per app. The
//! time of the last request is kept without waking anyone and goes along every few seconds.
//! A report that fails is retried; a master that restarted gets everything again on the next
//! full round (every minute), since it keeps statuses in memory only.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use shadow_common::{
    client::MasterClient,
    status::{now_ms, AppState, AppStatus, EffectiveLimits, LastError, StartPhase},
};
use tokio::sync::Notify;

pub struct StatusBoard {
    node: String,
    apps: Mutex<HashMap<String, AppStatus>>,
    dirty: Mutex<HashSet<String>>,
    /// Apps whose last request changed since it was last reported.
    touched: Mutex<HashSet<String>>,
    wake: Notify,
}

/// How often the time of the last request is sent along.
const REQUEST_EVERY: Duration = Duration::from_secs(5);
/// How often everything is sent again (a restarted master forgot it).
const FULL_EVERY: Duration = Duration::from_secs(60);

impl StatusBoard {
    pub fn new(node: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            node: node.into(),
            apps: Mutex::default(),
            dirty: Mutex::default(),
            touched: Mutex::default(),
            wake: Notify::new(),
        })
    }

    fn update(&self, task: &str, f: impl FnOnce(&mut AppStatus)) {
        {
            let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
            let status = apps
                .entry(task.to_owned())
                .or_insert_with(|| AppStatus::new(task, &self.node));
            f(status);
        }
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.to_owned());
        self.wake.notify_one();
    }

    fn enter(status: &mut AppStatus, state: AppState) {
        if status.state != state {
            status.state = state;
            status.since_ms = now_ms();
        }
        if state != AppState::Starting {
            status.phase = None;
        }
    }

    pub fn phase(&self, task: &str, phase: StartPhase) {
        self.update(task, |s| {
            Self::enter(s, AppState::Starting);
            s.phase = Some(phase);
        });
    }

    pub fn running(
        &self,
        task: &str,
        image: &str,
        digest: Option<String>,
        limits: EffectiveLimits,
    ) {
        self.update(task, |s| {
            Self::enter(s, AppState::Running);
            s.image = Some(image.to_owned());
            s.image_digest = digest;
            s.limits = Some(limits);
            s.cold_starts += 1;
            s.failures = 0;
            s.backoff_until_ms = None;
        });
    }

    /// Paused after its idle timeout; a request thaws it.
    pub fn frozen(&self, task: &str) {
        self.update(task, |s| Self::enter(s, AppState::Frozen));
    }

    /// Thawed by a request: running again (not a new cold start).
    pub fn thawed(&self, task: &str) {
        self.update(task, |s| Self::enter(s, AppState::Running));
    }

    pub fn stopping(&self, task: &str) {
        self.update(task, |s| Self::enter(s, AppState::Stopping));
    }

    pub fn idle(&self, task: &str) {
        self.update(task, |s| {
            // A failed start keeps showing as failed (or in back-off) until the next one.
            if !matches!(s.state, AppState::Failed | AppState::Backoff) {
                Self::enter(s, AppState::Idle);
            }
        });
    }

    /// A start failed; `backoff_until_ms` when requests are refused until then.
    pub fn failed(
        &self,
        task: &str,
        message: String,
        logs: Vec<String>,
        failures: u32,
        backoff_until_ms: Option<u64>,
    ) {
        self.update(task, |s| {
            let state = if backoff_until_ms.is_some() {
                AppState::Backoff
            } else {
                AppState::Failed
            };
            Self::enter(s, state);
            s.failures = failures;
            s.backoff_until_ms = backoff_until_ms;
            s.last_error = Some(LastError {
                at_ms: now_ms(),
                message,
                logs,
            });
        });
    }

    /// A back-off ran out or was lifted: the next request may start the app.
    pub fn backoff_over(&self, task: &str) {
        self.update(task, |s| {
            if s.state == AppState::Backoff {
                Self::enter(s, AppState::Failed);
                s.backoff_until_ms = None;
            }
        });
    }

    /// A request was served; reported with the next round, not at once.
    pub fn request(&self, task: &str) {
        let now = now_ms();
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = apps.get_mut(task) {
            s.last_request_ms = Some(now);
            drop(apps);
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            // On the request path: no allocation once the app is marked.
            if !touched.contains(task) {
                touched.insert(task.to_owned());
            }
        }
    }

    /// A task that is gone from the master is forgotten here too.
    pub fn forget(&self, task: &str) {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task);
    }

    pub fn get(&self, task: &str) -> Option<AppStatus> {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task)
            .cloned()
    }

    fn take(&self, set: &Mutex<HashSet<String>>) -> Vec<AppStatus> {
        let ids: Vec<String> = set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter_map(|id| apps.get(id).cloned()).collect()
    }

    /// Sends changes to the master until the process ends.
    pub async fn report_forever(self: Arc<Self>, master: MasterClient) {
        let mut requests = tokio::time::interval(REQUEST_EVERY);
        let mut full = tokio::time::interval(FULL_EVERY);
        requests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                () = self.wake.notified() => self.take(&self.dirty),
                _ = requests.tick() => self.take(&self.touched),
                _ = full.tick() => self.apps.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
            };
            for status in batch {
                if let Err(e) = master.report_app(&status).await {
                    tracing::debug!(task = %status.task_id, error = %e, "cannot report the app's status; retrying");
                    self.dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(status.task_id.clone());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.wake.notify_one();
                    break;
                }
            }
        }
    }
}
