//! What each app uses on this node, hour by hour, reported to the master every
//! `usage_report_s` (`POST /usage`).
//!
//! The request path only bumps atomics ([`AppMeter`]); the reporter folds them into the current
//! hour, adds the running time since its last round, samples each running container's CPU and
//! memory from its cgroup (through the runtime), and sends what changed. A report that fails
//! stays queued and is sent again with the same sequence number, so the master counts it once;
//! a node that dies loses at most one round.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use shadow_common::{
    client::MasterClient,
    proxy::ByteCounts,
    status::now_ms,
    usage::{hour_of, split_by_hour, UsageDelta, UsageReport},
};

use crate::runtime::ContainerRuntime;

/// One app's counters on this node; the request path touches only the atomics.
#[derive(Default)]
pub struct AppMeter {
    pub requests: AtomicU64,
    pub bytes: Arc<ByteCounts>,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Not yet reported, by hour.
    hours: BTreeMap<u64, UsageDelta>,
    /// While running: since when its running time is not yet counted (unix ms).
    counted_to_ms: Option<u64>,
    /// The running container and the CPU time of it already counted (ns).
    container: Option<(String, u64)>,
    /// Paused: its time counts as frozen, not running.
    frozen: bool,
}

impl Ledger {
    fn hour(&mut self, task: &str, hour: u64) -> &mut UsageDelta {
        self.hours.entry(hour).or_insert_with(|| UsageDelta {
            task_id: task.to_owned(),
            hour,
            ..UsageDelta::default()
        })
    }

    /// Counts running (or frozen) time up to `now`.
    fn run_to(&mut self, task: &str, now: u64) {
        if let Some(from) = self.counted_to_ms {
            let frozen = self.frozen;
            for (hour, ms) in split_by_hour(from, now) {
                let h = self.hour(task, hour);
                if frozen {
                    h.frozen_ms += ms;
                } else {
                    h.running_ms += ms;
                }
            }
            self.counted_to_ms = Some(now.max(from));
        }
    }
}

/// The node's meters, and the queue of reports the master has not confirmed.
pub struct UsageMeter {
    node: String,
    boot: String,
    runtime: Arc<dyn ContainerRuntime>,
    apps: Mutex<HashMap<String, Arc<AppMeter>>>,
    queue: Mutex<VecDeque<UsageReport>>,
    seq: AtomicU64,
    /// Deleted tasks whose meters go once their last figures are collected.
    gone: Mutex<std::collections::HashSet<String>>,
}

/// Reports kept while the master is away (a day of minutes); the oldest go first.
const MAX_QUEUED: usize = 1440;

impl UsageMeter {
    pub fn new(node: impl Into<String>, runtime: Arc<dyn ContainerRuntime>) -> Arc<Self> {
        Arc::new(Self {
            node: node.into(),
            boot: uuid::Uuid::new_v4().simple().to_string(),
            runtime,
            apps: Mutex::default(),
            queue: Mutex::default(),
            seq: AtomicU64::new(0),
            gone: Mutex::default(),
        })
    }

    /// The meter of `task`, made on first use (an app's slot keeps it).
    pub fn app(&self, task: &str) -> Arc<AppMeter> {
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.to_owned())
            .or_default()
            .clone()
    }

    /// The app started in `container`: a cold start, and its running time counts from now.
    pub fn started(&self, task: &str, container: &str) {
        let meter = self.app(task);
        let mut l = meter.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        l.hour(task, hour_of(now)).cold_starts += 1;
        l.counted_to_ms = Some(now);
        l.container = Some((container.to_owned(), 0));
    }

    /// The app was frozen (`true`) or thawed: its time counts as frozen or running from now.
    pub fn frozen(&self, task: &str, frozen: bool) {
        let meter = self.app(task);
        let mut l = meter.ledger.lock().unwrap_or_else(|e| e.into_inner());
        l.run_to(task, now_ms());
        l.frozen = frozen;
    }

    /// The app is about to stop: its last CPU and memory figures, before the container goes.
    pub async fn stopping(&self, task: &str) {
        self.sample(task).await;
    }

    /// The app stopped: its running time ends now.
    pub fn stopped(&self, task: &str) {
        let meter = self.app(task);
        let mut l = meter.ledger.lock().unwrap_or_else(|e| e.into_inner());
        l.run_to(task, now_ms());
        l.counted_to_ms = None;
        l.container = None;
        l.frozen = false;
    }

    /// Adds the container's CPU time since the last sample, and its memory peak.
    async fn sample(&self, task: &str) {
        let meter = self.app(task);
        let container = {
            let l = meter.ledger.lock().unwrap_or_else(|e| e.into_inner());
            l.container.as_ref().map(|(id, _)| id.clone())
        };
        let Some(container) = container else { return };
        let stats = match self.runtime.stats(&container).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(task, error = %e, "cannot read the app's CPU and memory");
                return;
            }
        };
        let mut l = meter.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let Some((id, counted_ns)) = l.container.clone() else {
            return;
        };
        if id != container {
            return;
        }
        // Whole milliseconds are counted; the rest waits for the next sample.
        let new_ms = stats.cpu_ns.saturating_sub(counted_ns) / 1_000_000;
        l.container = Some((id, counted_ns + new_ms * 1_000_000));
        let d = l.hour(task, hour_of(now_ms()));
        d.cpu_ms += new_ms;
        d.peak_memory_bytes = d.peak_memory_bytes.max(stats.memory_peak_bytes);
    }

    /// Folds everything counted so far into per-hour deltas, leaving the meters at zero.
    async fn collect(&self) -> Vec<UsageDelta> {
        let apps: Vec<(String, Arc<AppMeter>)> = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (task, meter) in apps {
            self.sample(&task).await;
            let now = now_ms();
            let requests = meter.requests.swap(0, Ordering::Relaxed);
            let bytes_in = meter.bytes.received.swap(0, Ordering::Relaxed);
            let bytes_out = meter.bytes.sent.swap(0, Ordering::Relaxed);
            let mut l = meter.ledger.lock().unwrap_or_else(|e| e.into_inner());
            let d = l.hour(&task, hour_of(now));
            d.requests += requests;
            d.bytes_in += bytes_in;
            d.bytes_out += bytes_out;
            l.run_to(&task, now);
            out.extend(
                std::mem::take(&mut l.hours)
                    .into_values()
                    .filter(|d| !d.is_empty()),
            );
        }
        out
    }

    /// A deleted task: its meter goes after the next collection (its last figures are
    /// reported, not lost).
    pub fn forget(&self, task: &str) {
        self.gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.to_owned());
    }

    /// Drops the meters of deleted tasks whose figures were all collected.
    fn drop_gone(&self) {
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        gone.retain(|task| {
            let idle = apps.get(task).is_none_or(|m| {
                let l = m.ledger.lock().unwrap_or_else(|e| e.into_inner());
                l.container.is_none()
                    && l.hours.is_empty()
                    && m.requests.load(Ordering::Relaxed) == 0
                    && m.bytes.received.load(Ordering::Relaxed) == 0
                    && m.bytes.sent.load(Ordering::Relaxed) == 0
            });
            if idle {
                apps.remove(task);
            }
            !idle
        });
    }

    /// The number of apps with a meter (for tests of the clean-up).
    pub fn metered(&self) -> usize {
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// One round: collect, queue, send what is queued in order (stopping at the first failure).
    pub async fn report(&self, master: &MasterClient) {
        let deltas = self.collect().await;
        self.drop_gone();
        if !deltas.is_empty() {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push_back(UsageReport {
                node: self.node.clone(),
                boot: self.boot.clone(),
                seq,
                deltas,
            });
            while q.len() > MAX_QUEUED {
                q.pop_front();
                tracing::warn!(
                    "the master has not taken usage reports for a day; dropping the oldest"
                );
            }
        }
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .cloned();
            let Some(report) = next else { return };
            if let Err(e) = master.report_usage(&report).await {
                tracing::debug!(error = %e, seq = report.seq, "cannot report usage; it is sent again next round");
                return;
            }
            self.queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
        }
    }

    /// Reports every `every` until the process ends.
    pub async fn report_forever(self: Arc<Self>, master: MasterClient, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.report(&master).await;
        }
    }
}
