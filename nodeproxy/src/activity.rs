//! What "idle" means for a running app: no request in flight, no open stream or tunnel, and
//! nothing for `idle_timeout_s` since the last one ended.
//!
//! Every forwarded exchange holds an [`ActivityToken`] until its response body ends or its
//! upgraded connection closes, so a WebSocket or SSE stream keeps the app alive however quiet.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

#[derive(Debug)]
pub struct Activity {
    inflight: AtomicUsize,
    last: Mutex<Instant>,
    changed: Notify,
}

/// Held for the length of one exchange.
#[derive(Debug)]
pub struct ActivityToken(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            changed: Notify::new(),
        })
    }

    pub fn enter(self: &Arc<Self>) -> ActivityToken {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        ActivityToken(self.clone())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// When the app became idle, or `None` while something is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.inflight() > 0 {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|e| e.into_inner()))
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
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
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
}
