//! What each app used, per hour, as the nodes report it: stored durably (it outlives restarts
//! of master and nodes), answered by `GET /usage`, and summed per app for `/metrics`.
//!
//! Kept apart from the registry: reports are frequent, need no watch event, and are written
//! by the usage store's own thread without the registry's lock.

pub mod postgres;
pub mod sqlite;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use shadow_common::{
    error::FieldError,
    usage::{UsageDelta, UsageReport, HOUR_S},
};

use crate::store::{StoreError, StoreThread};

/// Durable storage of usage rows (one per app and hour, summed over nodes).
pub trait UsageStore: Send {
    /// Adds the report's deltas, unless this `(node, boot)` already had a report with this
    /// `seq` or a later one; answers whether it was added. One transaction.
    fn apply(&mut self, report: &UsageReport) -> Result<bool, StoreError>;
    /// Rows with `from <= hour < to`, of one task or all, oldest first.
    fn query(
        &mut self,
        task: Option<&str>,
        from: u64,
        to: u64,
    ) -> Result<Vec<UsageDelta>, StoreError>;
    /// The last report counted per `(node, boot)`.
    fn reports(&mut self) -> Result<Vec<ReportMark>, StoreError>;
    /// Writes rows and report marks into this (empty) store in one transaction.
    fn import(&mut self, rows: &[UsageDelta], marks: &[ReportMark]) -> Result<(), StoreError>;
}

/// The last report of a node's boot that was counted: what makes a resent report count once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportMark {
    pub node: String,
    pub boot: String,
    pub seq: u64,
}

/// The usage store, and per-app totals kept in memory for `/metrics`.
pub struct UsageLedger {
    store: StoreThread<dyn UsageStore>,
    totals: Mutex<HashMap<String, UsageDelta>>,
}

/// More deltas than this in one report is not a node's minute.
const MAX_DELTAS: usize = 10_000;

impl UsageLedger {
    pub fn open(mut store: Box<dyn UsageStore>) -> Result<Arc<Self>, StoreError> {
        let mut totals: HashMap<String, UsageDelta> = HashMap::new();
        for row in store.query(None, 0, u64::MAX)? {
            let t = totals
                .entry(row.task_id.clone())
                .or_insert_with(|| UsageDelta {
                    task_id: row.task_id.clone(),
                    ..UsageDelta::default()
                });
            let peak = t.peak_memory_bytes;
            t.add(&row);
            // The total's peak is the latest hour's, for the gauge.
            t.peak_memory_bytes = if row.peak_memory_bytes > 0 {
                row.peak_memory_bytes
            } else {
                peak
            };
        }
        Ok(Arc::new(Self {
            store: StoreThread::spawn(store)?,
            totals: Mutex::new(totals),
        }))
    }

    /// Checks a report's shape before it is stored.
    pub fn check(report: &UsageReport) -> Result<(), FieldError> {
        if report.deltas.len() > MAX_DELTAS {
            return Err(FieldError::new(
                "deltas",
                format!("at most {MAX_DELTAS} deltas per report; send the rest in another"),
            ));
        }
        if let Some(d) = report.deltas.iter().find(|d| d.hour % HOUR_S != 0) {
            return Err(FieldError::new(
                "deltas.hour",
                format!(
                    "hour {} is not the start of an hour (a multiple of 3600 seconds)",
                    d.hour
                ),
            ));
        }
        if report.seq == 0 {
            return Err(FieldError::new("seq", "seq starts at 1"));
        }
        Ok(())
    }

    /// Stores a report; true if it was new.
    pub async fn apply(&self, report: UsageReport) -> Result<bool, StoreError> {
        let (added, report) = self
            .store
            .run(move |s| s.apply(&report).map(|a| (a, report)))
            .await?;
        if added {
            let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
            for d in &report.deltas {
                let t = totals
                    .entry(d.task_id.clone())
                    .or_insert_with(|| UsageDelta {
                        task_id: d.task_id.clone(),
                        ..UsageDelta::default()
                    });
                let peak = if d.peak_memory_bytes > 0 {
                    d.peak_memory_bytes
                } else {
                    t.peak_memory_bytes
                };
                t.add(d);
                t.peak_memory_bytes = peak;
            }
        }
        Ok(added)
    }

    /// Rows of one task or all.
    pub async fn query(
        &self,
        task: Option<String>,
        from: u64,
        to: u64,
    ) -> Result<Vec<UsageDelta>, StoreError> {
        self.store
            .run(move |s| s.query(task.as_deref(), from, to))
            .await
    }

    /// Each app's totals since it was first reported (peak: its latest hour's).
    pub fn totals(&self, task: &str) -> Option<UsageDelta> {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task)
            .cloned()
    }
}
