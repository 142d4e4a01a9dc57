//! The edge's Prometheus metrics: requests by task and status, retries, node health.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    retries: IntCounterVec,
    nodes_up: IntGauge,
    nodes_known: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("shadow_edge_requests_total", "Requests by task and status"),
            &["task", "status"],
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
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(retries.clone()),
            Box::new(nodes_up.clone()),
            Box::new(nodes_known.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            retries,
            nodes_up,
            nodes_known,
        }
    }

    pub fn request(&self, task: &str, status: http::StatusCode) {
        self.requests
            .with_label_values(&[task, status.as_str()])
            .inc();
    }
    pub fn retry(&self, reason: &str) {
        self.retries.with_label_values(&[reason]).inc();
    }

    pub fn render(&self, up: usize, known: usize) -> String {
        self.nodes_up.set(up as i64);
        self.nodes_known.set(known as i64);
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
