//! Wall-clock milliseconds driven by tokio's clock, so lease expiry can be tested with a paused
//! clock while `expires_at` on the wire stays a Unix timestamp that survives a restart.
//!
//! Masters that share a database read its clock instead of their own ([`Clock::starting_at`],
//! [`Clock::align`]): every lease time one master writes, another compares against the same
//! clock.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

#[derive(Debug)]
pub struct Clock {
    start: Instant,
    start_wall_ms: AtomicU64,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self::starting_at(wall.as_millis() as u64)
    }

    /// A clock that reads `wall_ms` now.
    pub fn starting_at(wall_ms: u64) -> Self {
        Self {
            start: Instant::now(),
            start_wall_ms: AtomicU64::new(wall_ms),
        }
    }

    /// Sets the clock to read `wall_ms` now (the database's clock, read again: the machine's
    /// own clock drifts from it by up to tens of milliseconds an hour).
    pub fn align(&self, wall_ms: u64) {
        let elapsed = self.start.elapsed().as_millis() as u64;
        self.start_wall_ms
            .store(wall_ms.saturating_sub(elapsed), Ordering::Relaxed);
    }

    fn base(&self) -> u64 {
        self.start_wall_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds since the Unix epoch, advancing with tokio's clock.
    pub fn now_ms(&self) -> u64 {
        self.base() + self.start.elapsed().as_millis() as u64
    }

    /// The tokio instant for a wall-clock time in ms (for timers).
    pub fn instant_at(&self, wall_ms: u64) -> Instant {
        self.start + Duration::from_millis(wall_ms.saturating_sub(self.base()))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
