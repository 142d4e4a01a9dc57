//! The node's Prometheus metrics: requests by task and status, cold starts and their phases,
//! running containers.

use std::sync::Arc;
use std::time::Duration;

use shadow_common::metrics::TaskRequests;
use shadow_common::task::Task;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: TaskRequests,
    cold_starts: HistogramVec,
    start_failures: IntCounter,
    stops: IntCounter,
    running: IntGauge,
    sandboxes: IntGauge,
}

fn buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = TaskRequests::new(
            "shadow_node_requests_total",
            "Requests by task (id and name) and status",
        )
        .expect("static metric definition");
        let cold_starts = HistogramVec::new(
            HistogramOpts::new(
                "shadow_node_cold_start_seconds",
                "Cold start duration by phase (total = the whole start); also checkpoint, pause, freeze (pause + checkpoint) and thaw",
            )
            .buckets(buckets()),
            &["phase"],
        )
        .expect("static metric definition");
        let start_failures = IntCounter::new(
            "shadow_node_start_failures_total",
            "Starts that failed or timed out",
        )
        .expect("static metric definition");
        let stops = IntCounter::new(
            "shadow_node_stops_total",
            "Apps stopped (idle, lease lost or shutdown)",
        )
        .expect("static metric definition");
        let running = IntGauge::new("shadow_node_running_containers", "Containers running now")
            .expect("static metric definition");
        let sandboxes = IntGauge::new(
            "shadow_node_sandboxes_ready",
            "Sandboxes ready for cold starts now",
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.collector()) as Box<dyn prometheus::core::Collector>,
            Box::new(cold_starts.clone()),
            Box::new(start_failures.clone()),
            Box::new(stops.clone()),
            Box::new(running.clone()),
            Box::new(sandboxes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            cold_starts,
            start_failures,
            stops,
            running,
            sandboxes,
        }
    }

    /// Drops the request series of tasks `keep` refuses (deleted ones).
    pub fn retain_tasks(&self, keep: impl Fn(&str) -> bool) {
        self.requests.retain(keep);
    }

    pub fn request(&self, task: &Arc<Task>, status: http::StatusCode) {
        self.requests.inc(task, status);
    }
    pub fn phase(&self, phase: &str, took: Duration) {
        self.cold_starts
            .with_label_values(&[phase])
            .observe(took.as_secs_f64());
    }
    pub fn cold_start(&self, took: Duration) {
        self.phase("total", took);
        self.running.inc();
    }
    pub fn start_failed(&self) {
        self.start_failures.inc();
    }
    pub fn stopped(&self) {
        self.stops.inc();
        self.running.dec();
    }

    pub fn sandboxes_ready(&self, n: usize) {
        self.sandboxes.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
