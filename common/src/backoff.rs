//! Waits that double after every failed attempt, up to a cap: the one backoff helper the
//! programs' retry loops share (readiness probes, lease takes, detaches, watches, device polls).

use std::time::Duration;

/// The waits between attempts: `first`, then doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first` (or `max`, if that is smaller).
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Self {
            first,
            next: first,
            max,
        }
    }

    /// The wait before the next attempt; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// The wait the next call of [`Backoff::next_delay`] returns, without moving on.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Back to the first wait, after an attempt succeeded.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// The wait after `failures` failures in a row (the first failure waits `first`), at most `max`:
/// for state that remembers a count rather than a running [`Backoff`].
pub fn after_failures(failures: u32, first: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    first.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_the_first_wait_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(MS, 50 * MS);
        let waits: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 50, 50, 50]);
        assert_eq!(b.peek(), 50 * MS);
        b.reset();
        assert_eq!(b.next_delay(), MS);
        // A cap below the first wait is the wait from the start.
        assert_eq!(
            Backoff::new(MS, Duration::ZERO).next_delay(),
            Duration::ZERO
        );
        // Doubling never overflows, however long it runs.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.peek(), Duration::MAX);
    }

    #[test]
    fn a_failure_count_maps_to_the_same_waits() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=10)
            .map(|n| after_failures(n, s, 300 * s).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(after_failures(u32::MAX, s, 300 * s), 300 * s);
        assert_eq!(after_failures(0, s, 300 * s), s);
    }
}
