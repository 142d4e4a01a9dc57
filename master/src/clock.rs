//! Wall-clock milliseconds driven by tokio's clock, so lease expiry can be tested with a paused
//! clock while `expires_at` on the wire stays a Unix timestamp that survives a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_wall_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            start: Instant::now(),
            start_wall_ms: wall.as_millis() as u64,
        }
    }

    /// Milliseconds since the Unix epoch, advancing with tokio's clock.
    pub fn now_ms(&self) -> u64 {
        self.start_wall_ms + self.start.elapsed().as_millis() as u64
    }

    /// The tokio instant for a wall-clock time in ms (for timers).
    pub fn instant_at(&self, wall_ms: u64) -> Instant {
        self.start + Duration::from_millis(wall_ms.saturating_sub(self.start_wall_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
