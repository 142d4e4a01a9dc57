//! What "idle" means for a running app: no request in flight, no open stream or tunnel, and
//! nothing for `idle_timeout_s` since the last one ended.
//!
//! Every forwarded exchange holds an [`ActivityToken`] until its response body ends or its
//! upgraded connection closes, so a WebSocket or SSE stream keeps the app alive however quiet.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use shadow_common::proxy::{ActivityEnd, ActivityGuard};
use tokio::{sync::Notify, time::Instant};

#[derive(Debug)]
pub struct Activity {
    inflight: AtomicUsize,
    /// When this was made; `last` counts from it.
    origin: Instant,
    /// The end of the last exchange, in nanoseconds after `origin`: an atomic rather than a
    /// locked `Instant`, because every request on every thread writes it.
    last: AtomicU64,
    changed: Notify,
}

/// Held for the length of one exchange. `None` only once handed to an [`ActivityGuard`].
#[derive(Debug)]
pub struct ActivityToken(Option<Arc<Activity>>);

impl ActivityToken {
    /// The same hold as a proxy guard, without a box: the guard ends the exchange when it drops.
    pub fn into_guard(mut self) -> ActivityGuard {
        match self.0.take() {
            Some(activity) => ActivityGuard::shared(activity),
            None => ActivityGuard::new(()),
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            origin: Instant::now(),
            last: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    pub fn enter(self: &Arc<Self>) -> ActivityToken {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        ActivityToken(Some(self.clone()))
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Counts as an exchange that ended now: the app did work of its own (see
    /// [`super::busy`]), so its idle time starts again.
    pub fn touch(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::SeqCst);
    }

    /// When the app became idle, or `None` while something is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.inflight() > 0 {
            return None;
        }
        Some(self.origin + Duration::from_nanos(self.last.load(Ordering::SeqCst)))
    }

    /// Resolves once the app has been idle for `timeout` (it may be busy again by the time the
    /// caller looks: re-check under the caller's lock).
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.idle_since() {
                Some(since) if since + timeout <= Instant::now() => return,
                Some(since) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(since + timeout) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

impl Drop for ActivityToken {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.end();
        }
    }
}

impl ActivityEnd for Activity {
    fn end(&self) {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(since, Ordering::SeqCst);
        // Only the last exchange to end can make the app idle; waking the reaper on every
        // response would cost a cross-thread wake-up per request for nothing.
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_exchange() {
        let a = Activity::new();
        let t0 = Instant::now();
        let token = a.enter();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(a.idle_since().is_none(), "a held token means busy");
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move {
                a.idle_for(Duration::from_secs(5)).await;
                Instant::now()
            })
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(token);
        let idle_at = waiter.await.expect("join");
        assert_eq!(idle_at - t0, Duration::from_secs(106));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_handed_to_a_guard_holds_until_the_guard_drops() {
        let a = Activity::new();
        let t0 = Instant::now();
        let guard = a.enter().into_guard();
        assert_eq!(a.inflight(), 1, "handing over is not an end");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(a.idle_since().is_none());
        drop(guard);
        assert_eq!(a.inflight(), 0);
        assert_eq!(a.idle_since(), Some(t0 + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_touch_starts_the_idle_time_again() {
        let a = Activity::new();
        let t0 = Instant::now();
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move {
                a.idle_for(Duration::from_secs(5)).await;
                Instant::now()
            })
        };
        tokio::time::advance(Duration::from_secs(4)).await;
        a.touch();
        let idle_at = waiter.await.expect("join");
        assert_eq!(idle_at - t0, Duration::from_secs(9), "5 s after the touch");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_only_once_every_exchange_has_ended() {
        let a = Activity::new();
        let (first, second) = (a.enter(), a.enter());
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.idle_for(Duration::from_secs(5)).await })
        };
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(first);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            !waiter.is_finished(),
            "idle while an exchange was still open"
        );
        assert_eq!(a.inflight(), 1);
        let t_end = Instant::now();
        drop(second);
        assert_eq!(a.idle_since(), Some(t_end));
        waiter.await.expect("join");
        assert_eq!(Instant::now() - t_end, Duration::from_secs(5));
    }
}
