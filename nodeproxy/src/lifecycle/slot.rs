//! One app's place on the node: its state, guarded by a short lock that is never held across an
//! await, the channels waiters watch, and the failed starts it backs off from.
//!
//! Every change of state goes through [`Slot::set`], under the lock, so a waiter that subscribed
//! under the same lock never misses one.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use shadow_common::task::{Task, TaskSpec};
use tokio::{sync::watch, time::Instant};

use super::{error::StartError, start::Running};

/// How a start ended (`None` while it runs).
pub type StartOutcome = Option<Result<(), Arc<StartError>>>;

pub enum State {
    Idle,
    Starting(watch::Receiver<StartOutcome>),
    Running(Arc<Running>),
    /// Being paused and checkpointed; a request waits until it is frozen, then thaws it.
    Freezing(Arc<Running>),
    /// Paused, memory and lease kept; a request thaws it.
    Frozen(Arc<Running>),
    /// Being thawed for a request.
    Thawing(Arc<Running>),
    Stopping,
}

impl State {
    /// The app's run, in every state that has one.
    pub fn running(&self) -> Option<&Arc<Running>> {
        match self {
            State::Running(r) | State::Freezing(r) | State::Frozen(r) | State::Thawing(r) => {
                Some(r)
            }
            State::Idle | State::Starting(_) | State::Stopping => None,
        }
    }
}

pub struct Slot {
    state: Mutex<State>,
    /// True while the state is `Idle`, for whoever must wait until the app is fully stopped.
    pub idle: watch::Sender<bool>,
    /// Bumped on every change of state.
    changes: watch::Sender<u64>,
    /// The failed starts in a row, and how long the next one waits.
    failure: Mutex<Option<Failure>>,
    /// The app's usage counters, bumped by every request it serves.
    pub meter: Arc<crate::usage::AppMeter>,
    /// When it last served a request, for its status.
    pub last_request: Arc<crate::status::RequestClock>,
}

/// Starts that failed in a row with one spec: requests are refused until `until`.
struct Failure {
    count: u32,
    until: Instant,
    spec: TaskSpec,
    error: Arc<StartError>,
}

/// The longest wait between two failing starts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before the next start after `failures` failed ones: 1 s, doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    shadow_common::backoff::after_failures(failures, Duration::from_secs(1), MAX_BACKOFF)
}

impl Slot {
    pub fn new(
        meter: Arc<crate::usage::AppMeter>,
        last_request: Arc<crate::status::RequestClock>,
    ) -> Self {
        Self {
            state: Mutex::new(State::Idle),
            idle: watch::channel(true).0,
            changes: watch::channel(0).0,
            failure: Mutex::new(None),
            meter,
            last_request,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `new`; `st` is the guard of [`Slot::lock`].
    pub fn set(&self, st: &mut State, new: State) {
        self.idle.send_replace(matches!(new, State::Idle));
        *st = new;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes the lock and moves to `new`.
    pub fn set_now(&self, new: State) {
        self.set(&mut self.lock(), new);
    }

    /// A receiver that sees the next change of state; take it under the lock that read the
    /// current one.
    pub fn next_change(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The back-off the next start of `task` must wait out, if any; a changed spec ends it.
    pub fn backing_off(&self, task: &Task) -> Option<(Duration, Arc<StartError>)> {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let f = failure.as_ref()?;
        if !f.spec.runs_like(&task.spec) {
            *failure = None;
            return None;
        }
        let left = f.until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| (left, f.error.clone()))
    }

    /// Counts a failed start of `task`; answers how many failed in a row with its spec.
    pub fn failed(&self, task: &Task, error: Arc<StartError>) -> u32 {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let count = failure
            .as_ref()
            .filter(|f| f.spec.runs_like(&task.spec))
            .map_or(0, |f| f.count)
            + 1;
        *failure = Some(Failure {
            count,
            until: Instant::now() + backoff(count),
            spec: task.spec.clone(),
            error,
        });
        count
    }

    /// A start succeeded: the back-off is over.
    pub fn succeeded(&self) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
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
