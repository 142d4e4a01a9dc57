//! The node's record of each app's state, and its reports to the master as they change.
//!
//! Every change of state (a start's phases, running, stopping, idle, a failure and its
//! back-off) marks the app dirty and wakes the reporter, which sends the newest status of each
//! dirty app (`PUT /nodes/{node}/apps/{task}`): a burst of changes costs one call per app. The
//! time of the last request is kept without waking anyone and goes along every few seconds:
//! the request path stores it in the app's [`RequestClock`], an atomic, with no lock and no
//! lookup (it was two mutexes and two hashed lookups per request).
//! A report that fails is retried; a master that restarted gets everything again on the next
//! full round (every minute), since it keeps statuses in memory only.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
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
    /// Each app's last request; locked after `apps` when both are.
    clocks: Mutex<HashMap<String, Arc<RequestClock>>>,
    wake: Notify,
}

/// When an app last served a request (unix ms; 0: not yet), set on the request path.
#[derive(Debug, Default)]
pub struct RequestClock(AtomicU64);

impl RequestClock {
    /// A request was served now.
    pub fn tick(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn read(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&ms| ms != 0)
    }
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
            clocks: Mutex::default(),
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

    /// The clock the request path ticks for `task` (reported with the next round, not at
    /// once); the same one until the task is forgotten.
    pub fn request_clock(&self, task: &str) -> Arc<RequestClock> {
        self.clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.to_owned())
            .or_default()
            .clone()
    }

    /// A task that is gone from the master is forgotten here too.
    pub fn forget(&self, task: &str) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.remove(task);
        self.clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task);
    }

    pub fn get(&self, task: &str) -> Option<AppStatus> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
        let status = apps.get_mut(task)?;
        Self::read_clock(&clocks, status);
        Some(status.clone())
    }

    /// Copies the app's clock into its status; whether it moved.
    fn read_clock(clocks: &HashMap<String, Arc<RequestClock>>, status: &mut AppStatus) -> bool {
        let at = clocks.get(&status.task_id).and_then(|c| c.read());
        if at.is_some() && at != status.last_request_ms {
            status.last_request_ms = at;
            return true;
        }
        false
    }

    /// The dirty apps' statuses, with their last requests.
    fn take_dirty(&self) -> Vec<AppStatus> {
        let ids: Vec<String> = self
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .filter_map(|id| {
                let status = apps.get_mut(id)?;
                Self::read_clock(&clocks, status);
                Some(status.clone())
            })
            .collect()
    }

    /// The statuses of apps that served a request since their last report (`all`: every app).
    fn take_requested(&self, all: bool) -> Vec<AppStatus> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
        apps.values_mut()
            .filter_map(|status| (Self::read_clock(&clocks, status) || all).then(|| status.clone()))
            .collect()
    }

    /// Sends changes to the master until the process ends.
    pub async fn report_forever(self: Arc<Self>, master: MasterClient) {
        let mut requests = tokio::time::interval(REQUEST_EVERY);
        let mut full = tokio::time::interval(FULL_EVERY);
        requests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                () = self.wake.notified() => self.take_dirty(),
                _ = requests.tick() => self.take_requested(false),
                _ = full.tick() => self.take_requested(true),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_reported_once_with_its_time_and_forgotten_with_the_task() {
        let board = StatusBoard::new("n1");
        board.phase("t1", StartPhase::Image);
        board.phase("t2", StartPhase::Image);
        let clock = board.request_clock("t1");
        assert!(Arc::ptr_eq(&clock, &board.request_clock("t1")));
        assert!(board.take_requested(false).is_empty(), "no request yet");

        clock.tick();
        let reported = board.take_requested(false);
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].task_id, "t1");
        let at = reported[0].last_request_ms.expect("the request's time");
        assert_eq!(board.get("t1").and_then(|s| s.last_request_ms), Some(at));
        assert!(
            board.take_requested(false).is_empty(),
            "reported already: not again until the next request"
        );
        assert_eq!(
            board.take_requested(true).len(),
            2,
            "a full round sends all"
        );

        board.forget("t1");
        assert!(board.get("t1").is_none());
        assert!(!Arc::ptr_eq(&clock, &board.request_clock("t1")));
    }
}
