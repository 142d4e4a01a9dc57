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

    pub fn render(
        &self,
        registry: &Registry,
        usage: &crate::usage::UsageLedger,
    ) -> warp::reply::Response {
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
        buf.extend_from_slice(per_app(registry, usage).as_bytes());
        warp::reply::with_header(buf, "content-type", "text/plain; version=0.0.4").into_response()
    }
}

/// Per-app usage series, labelled with the app's name and id: made at each scrape from the
/// tasks that exist, so a deleted app's series are gone with it.
fn per_app(registry: &Registry, usage: &crate::usage::UsageLedger) -> String {
    type Figure = fn(&shadow_common::usage::UsageDelta) -> f64;
    let families: [(&str, &str, &str, Figure); 7] = [
        (
            "shadow_app_running_seconds_total",
            "counter",
            "Seconds the app's container ran",
            |d| d.running_ms as f64 / 1000.0,
        ),
        (
            "shadow_app_cold_starts_total",
            "counter",
            "Starts of the app's container",
            |d| d.cold_starts as f64,
        ),
        (
            "shadow_app_requests_total",
            "counter",
            "Requests the app served",
            |d| d.requests as f64,
        ),
        (
            "shadow_app_received_bytes_total",
            "counter",
            "Body bytes sent to the app",
            |d| d.bytes_in as f64,
        ),
        (
            "shadow_app_sent_bytes_total",
            "counter",
            "Body bytes the app sent back",
            |d| d.bytes_out as f64,
        ),
        (
            "shadow_app_cpu_seconds_total",
            "counter",
            "CPU time the app used",
            |d| d.cpu_ms as f64 / 1000.0,
        ),
        (
            "shadow_app_memory_peak_bytes",
            "gauge",
            "The app's peak memory in its latest hour of use",
            |d| d.peak_memory_bytes as f64,
        ),
    ];
    let apps: Vec<(String, String, shadow_common::usage::UsageDelta)> = registry
        .list_tasks()
        .into_iter()
        .filter_map(|t| usage.totals(&t.id).map(|d| (t.spec.name, t.id, d)))
        .collect();
    let mut out = String::new();
    if apps.is_empty() {
        return out;
    }
    for (name, kind, help, figure) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (app, id, d) in &apps {
            out.push_str(&format!(
                "{name}{{app=\"{}\",task=\"{}\"}} {}\n",
                label(app),
                label(id),
                figure(d)
            ));
        }
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
