//! Busy-aware idle: an app that works without requests (a report being generated, a queue
//! being drained) must not be stopped half-way. While it runs, its container's CPU time is
//! sampled every busy window; a window in which it used more than `busy_cpu_percent` of one
//! CPU counts as activity (see [`super::activity::Activity::touch`]).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::activity::Activity;
use crate::runtime::ContainerRuntime;

/// One reading of a container's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub cpu_ns: u64,
    pub at: Instant,
}

/// The percent of one CPU used between two samples.
pub fn cpu_percent(before: Sample, after: Sample) -> f64 {
    let wall = after.at.saturating_duration_since(before.at);
    if wall.is_zero() {
        return 0.0;
    }
    after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / wall.as_nanos() as f64 * 100.0
}

/// Whether the app was busy between the samples, by the node's threshold (0 = never).
pub fn was_busy(before: Sample, after: Sample, threshold_percent: f64) -> bool {
    threshold_percent > 0.0 && cpu_percent(before, after) > threshold_percent
}

/// A window never shorter than this, so sampling costs little however it is configured.
pub const MIN_WINDOW: Duration = Duration::from_millis(100);

/// Samples `container`'s CPU time every `window` and touches `activity` after each busy window,
/// until dropped. Runs beside the app's supervisor, never inside it: a stats call can take
/// Docker a second, and the supervisor must act on a lost lease at once.
pub async fn watch(
    runtime: Arc<dyn ContainerRuntime>,
    container: String,
    activity: Arc<Activity>,
    window: Duration,
    threshold_percent: f64,
) {
    let sample = || async {
        let cpu_ns = runtime.cpu_ns(&container).await.ok()?;
        Some(Sample {
            cpu_ns,
            at: Instant::now(),
        })
    };
    let window = window.max(MIN_WINDOW);
    let mut ticks = tokio::time::interval_at(Instant::now() + window, window);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = sample().await;
    loop {
        ticks.tick().await;
        let now = sample().await;
        if let (Some(b), Some(a)) = (before, now) {
            if was_busy(b, a, threshold_percent) {
                activity.touch();
            }
        }
        before = now.or(before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, cpu_ms: u64, origin: Instant) -> Sample {
        Sample {
            cpu_ns: cpu_ms * 1_000_000,
            at: origin + Duration::from_millis(ms),
        }
    }

    #[test]
    fn busy_is_more_than_the_threshold_of_one_cpu() {
        let o = Instant::now();
        // 600 ms of CPU in 5 s: 12 %.
        let (a, b) = (at(0, 1_000, o), at(5_000, 1_600, o));
        assert!((cpu_percent(a, b) - 12.0).abs() < 1e-9);
        assert!(was_busy(a, b, 10.0));
        assert!(!was_busy(a, b, 12.0), "more than, not as much as");
        assert!(!was_busy(a, b, 0.0), "0 turns the check off");
        // Two CPUs flat out: 200 %.
        let c = at(10_000, 11_600, o);
        assert!((cpu_percent(b, c) - 200.0).abs() < 1e-9);
        // A restarted counter (a new container) or no time passed: not busy.
        assert_eq!(cpu_percent(c, at(10_000, 0, o)), 0.0);
        assert_eq!(cpu_percent(c, c), 0.0);
    }
}
