//! The edge's Prometheus metrics: requests by task and status, retries, node health.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use shadow_common::metrics::TaskRequests;
use shadow_common::proxy::{BodyStall, ClientLimits};
use shadow_common::task::Task;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: TaskRequests,
    retries: IntCounterVec,
    nodes_up: IntGauge,
    nodes_known: IntGauge,
    connections_open: IntGauge,
    connections_refused: IntCounterVec,
    body_stalls: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = TaskRequests::new(
            "shadow_edge_requests_total",
            "Requests by task (id and name) and status",
        )
        .expect("static metric definition");
        let retries = IntCounterVec::new(
            Opts::new(
                "shadow_edge_retries_total",
                "Requests sent to another node, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let nodes_up = IntGauge::new(
            "shadow_edge_nodes_up",
            "Nodes this edge's checks see healthy",
        )
        .expect("static metric definition");
        let nodes_known = IntGauge::new("shadow_edge_nodes_checked", "Nodes this edge checks")
            .expect("static metric definition");
        let connections_open = IntGauge::new(
            "shadow_edge_client_connections",
            "Client connections open on the public listeners",
        )
        .expect("static metric definition");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "shadow_edge_client_connections_refused_total",
                "Client connections refused over a cap (per_ip: 429, total: 503)",
            ),
            &["cap"],
        )
        .expect("static metric definition");
        let body_stalls = IntCounter::new(
            "shadow_edge_client_body_stalls_total",
            "Request bodies cut with 408 because the client stopped sending",
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.collector()) as Box<dyn prometheus::core::Collector>,
            Box::new(retries.clone()),
            Box::new(nodes_up.clone()),
            Box::new(nodes_known.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
            Box::new(body_stalls.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            retries,
            nodes_up,
            nodes_known,
            connections_open,
            connections_refused,
            body_stalls,
        }
    }

    /// Drops the request series of tasks `keep` refuses (deleted ones).
    pub fn retain_tasks(&self, keep: impl Fn(&str) -> bool) {
        self.requests.retain(keep);
    }

    pub fn request(&self, task: &Arc<Task>, status: http::StatusCode) {
        self.requests.inc(task, status);
    }
    pub fn retry(&self, reason: &str) {
        self.retries.with_label_values(&[reason]).inc();
    }

    pub fn render(
        &self,
        up: usize,
        known: usize,
        limits: &ClientLimits,
        stall: &BodyStall,
    ) -> String {
        let stalls = stall.stalls.load(Ordering::Relaxed);
        self.body_stalls
            .inc_by(stalls.saturating_sub(self.body_stalls.get()));
        self.nodes_up.set(up as i64);
        self.nodes_known.set(known as i64);
        self.connections_open.set(limits.open() as i64);
        for (cap, n) in [
            ("per_ip", &limits.refused_per_ip),
            ("total", &limits.refused_total),
        ] {
            let c = self.connections_refused.with_label_values(&[cap]);
            c.inc_by(n.load(Ordering::Relaxed).saturating_sub(c.get()));
        }
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
