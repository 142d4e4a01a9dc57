//! What each app used, hour by hour: the nodes' reports and the master's answers
//! (`POST /usage`, `GET /usage`).

use serde::{Deserialize, Serialize};

/// One hour, in seconds: usage is kept per app per hour (UTC).
pub const HOUR_S: u64 = 3600;

/// The start of the hour holding unix millisecond `ms`, in unix seconds.
pub fn hour_of(ms: u64) -> u64 {
    ms / 1000 / HOUR_S * HOUR_S
}

/// What one app used on one node within one hour, since the node's last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageDelta {
    pub task_id: String,
    /// The hour's start (unix seconds, a multiple of 3600).
    pub hour: u64,
    #[serde(default)]
    pub running_ms: u64,
    #[serde(default)]
    pub frozen_ms: u64,
    #[serde(default)]
    pub cold_starts: u64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub cpu_ms: u64,
    /// The most memory the app held in the hour (a maximum, not a sum).
    #[serde(default)]
    pub peak_memory_bytes: u64,
}

impl UsageDelta {
    pub fn is_empty(&self) -> bool {
        self.running_ms == 0
            && self.frozen_ms == 0
            && self.cold_starts == 0
            && self.requests == 0
            && self.bytes_in == 0
            && self.bytes_out == 0
            && self.cpu_ms == 0
            && self.peak_memory_bytes == 0
    }

    /// Adds `other` (of the same app and hour) to this one.
    pub fn add(&mut self, other: &UsageDelta) {
        self.running_ms += other.running_ms;
        self.frozen_ms += other.frozen_ms;
        self.cold_starts += other.cold_starts;
        self.requests += other.requests;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.cpu_ms += other.cpu_ms;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
    }
}

/// `POST /usage`: a node's report. `(node, boot, seq)` makes a retried report count once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    pub node: String,
    /// Random per start of the node process, so its `seq` may start again at 1.
    pub boot: String,
    /// Grows by one per report of this boot.
    pub seq: u64,
    pub deltas: Vec<UsageDelta>,
}

/// `GET /usage`: one app's use in one hour, over every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub task_id: String,
    /// The app's name, when the task still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The hour's start (unix seconds).
    pub hour: u64,
    pub running_s: f64,
    pub frozen_s: f64,
    pub cold_starts: u64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cpu_s: f64,
    pub peak_memory_bytes: u64,
}

impl UsageRow {
    /// Adds `other` (another hour, or another node) to this row; the peak is a maximum.
    pub fn add(&mut self, other: &UsageRow) {
        self.running_s += other.running_s;
        self.frozen_s += other.frozen_s;
        self.cold_starts += other.cold_starts;
        self.requests += other.requests;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.cpu_s += other.cpu_s;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
    }

    pub fn from_delta(d: &UsageDelta, name: Option<String>) -> Self {
        Self {
            task_id: d.task_id.clone(),
            name,
            hour: d.hour,
            running_s: d.running_ms as f64 / 1000.0,
            frozen_s: d.frozen_ms as f64 / 1000.0,
            cold_starts: d.cold_starts,
            requests: d.requests,
            bytes_in: d.bytes_in,
            bytes_out: d.bytes_out,
            cpu_s: d.cpu_ms as f64 / 1000.0,
            peak_memory_bytes: d.peak_memory_bytes,
        }
    }
}

/// Bytes for people: `512 B`, `1.5 MiB`.
pub fn bytes_text(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Splits the span `[from_ms, to_ms)` at hour boundaries: `(hour, ms in it)`.
pub fn split_by_hour(from_ms: u64, to_ms: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = from_ms;
    while at < to_ms {
        let hour = hour_of(at);
        let end = ((hour + HOUR_S) * 1000).min(to_ms);
        out.push((hour, end - at));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_across_two_hours_is_split_at_the_boundary() {
        let h = 1_800_000_000 / HOUR_S * HOUR_S;
        let from = (h + HOUR_S) * 1000 - 1500;
        assert_eq!(
            split_by_hour(from, from + 4000),
            vec![(h, 1500), (h + HOUR_S, 2500)]
        );
        assert!(split_by_hour(from, from).is_empty());
        assert_eq!(hour_of(h * 1000 + 1), h);
    }
}
