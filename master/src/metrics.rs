//! `GET /metrics` in Prometheus text format: requests by method and status, and state gauges.

use prometheus::{
    Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry as Prom, TextEncoder,
};
use warp::Reply;

use crate::registry::Registry;

#[derive(Clone)]
pub struct Metrics {
    prom: Prom,
    requests: IntCounterVec,
    tasks: IntGauge,
    nodes: IntGaugeVec,
    leases: IntGauge,
    watchers: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let prom = Prom::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "shadow_master_requests_total",
                "API requests by method and status",
            ),
            &["method", "status"],
        )
        .expect("static metric definition");
        let tasks = IntGauge::new("shadow_master_tasks", "Tasks defined")
            .expect("static metric definition");
        let nodes = IntGaugeVec::new(
            Opts::new("shadow_master_nodes", "Registered nodes by health"),
            &["healthy"],
        )
        .expect("static metric definition");
        let leases = IntGauge::new("shadow_master_leases", "Volume leases held")
            .expect("static metric definition");
        let watchers = IntGauge::new(
            "shadow_master_watchers",
            "Watch requests waiting for a change",
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tasks.clone()),
            Box::new(nodes.clone()),
            Box::new(leases.clone()),
            Box::new(watchers.clone()),
        ] {
            prom.register(c).expect("metric names are unique");
        }
        Self {
            prom,
            requests,
            tasks,
            nodes,
            leases,
            watchers,
        }
    }

    /// Counts a waiting watch request until the returned guard drops.
    pub fn watching(&self) -> WatcherGuard {
        self.watchers.inc();
        WatcherGuard(self.watchers.clone())
    }

    pub fn observe(&self, method: &str, status: u16) {
        self.requests
            .with_label_values(&[method, &status.to_string()])
            .inc();
    }

    pub fn render(&self, registry: &Registry) -> warp::reply::Response {
        let (tasks, healthy, nodes, leases) = registry.counts();
        self.tasks.set(tasks as i64);
        self.nodes.with_label_values(&["true"]).set(healthy as i64);
        self.nodes
            .with_label_values(&["false"])
            .set((nodes - healthy) as i64);
        self.leases.set(leases as i64);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.prom.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        warp::reply::with_header(buf, "content-type", "text/plain; version=0.0.4").into_response()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct WatcherGuard(IntGauge);
impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
