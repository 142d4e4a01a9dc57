//! The PostgreSQL [`UsageStore`]: the `usage` and `usage_reports` tables of the master's
//! database (see `crate::store::postgres` for the schema).

use postgres::Client;
use shadow_common::usage::{UsageDelta, UsageReport};

use super::{ReportMark, UsageStore};
use crate::store::{
    postgres::{connect, db},
    StoreError,
};

pub struct PostgresUsage {
    client: Client,
}

impl PostgresUsage {
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: connect(url)?,
        })
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const ADD: &str = "INSERT INTO usage VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (task_id, hour) DO UPDATE SET
       running_ms = usage.running_ms + excluded.running_ms,
       frozen_ms = usage.frozen_ms + excluded.frozen_ms,
       cold_starts = usage.cold_starts + excluded.cold_starts,
       requests = usage.requests + excluded.requests,
       bytes_in = usage.bytes_in + excluded.bytes_in,
       bytes_out = usage.bytes_out + excluded.bytes_out,
       cpu_ms = usage.cpu_ms + excluded.cpu_ms,
       peak_memory_bytes = GREATEST(usage.peak_memory_bytes, excluded.peak_memory_bytes)";

fn add(tx: &mut postgres::Transaction<'_>, d: &UsageDelta) -> Result<(), StoreError> {
    tx.execute(
        ADD,
        &[
            &d.task_id,
            &int(d.hour),
            &int(d.running_ms),
            &int(d.frozen_ms),
            &int(d.cold_starts),
            &int(d.requests),
            &int(d.bytes_in),
            &int(d.bytes_out),
            &int(d.cpu_ms),
            &int(d.peak_memory_bytes),
        ],
    )
    .map_err(db)?;
    Ok(())
}

impl UsageStore for PostgresUsage {
    fn apply(&mut self, report: &UsageReport) -> Result<bool, StoreError> {
        let mut tx = self.client.transaction().map_err(db)?;
        // The lock makes two masters taking the same report count it once (a row lock would
        // not cover a boot's first report).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))",
            &[&report.node, &report.boot],
        )
        .map_err(db)?;
        let last = tx
            .query_opt(
                "SELECT seq FROM usage_reports WHERE node = $1 AND boot = $2",
                &[&report.node, &report.boot],
            )
            .map_err(db)?
            .map(|r| r.get::<_, i64>(0));
        if last.is_some_and(|l| l >= int(report.seq)) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO usage_reports VALUES ($1, $2, $3)
             ON CONFLICT (node, boot) DO UPDATE SET seq = excluded.seq",
            &[&report.node, &report.boot, &int(report.seq)],
        )
        .map_err(db)?;
        for d in &report.deltas {
            add(&mut tx, d)?;
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn query(
        &mut self,
        task: Option<&str>,
        from: u64,
        to: u64,
    ) -> Result<Vec<UsageDelta>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT task_id, hour, running_ms, frozen_ms, cold_starts, requests, bytes_in,
                        bytes_out, cpu_ms, peak_memory_bytes FROM usage
                 WHERE ($1::TEXT IS NULL OR task_id = $1) AND hour >= $2 AND hour < $3
                 ORDER BY hour, task_id",
                &[&task, &int(from), &int(to)],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let u = |i: usize| r.get::<_, i64>(i).max(0) as u64;
                UsageDelta {
                    task_id: r.get(0),
                    hour: u(1),
                    running_ms: u(2),
                    frozen_ms: u(3),
                    cold_starts: u(4),
                    requests: u(5),
                    bytes_in: u(6),
                    bytes_out: u(7),
                    cpu_ms: u(8),
                    peak_memory_bytes: u(9),
                }
            })
            .collect())
    }

    fn reports(&mut self) -> Result<Vec<ReportMark>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT node, boot, seq FROM usage_reports ORDER BY node, boot",
                &[],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| ReportMark {
                node: r.get(0),
                boot: r.get(1),
                seq: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect())
    }

    fn import(&mut self, rows: &[UsageDelta], marks: &[ReportMark]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction().map_err(db)?;
        for d in rows {
            add(&mut tx, d)?;
        }
        for m in marks {
            tx.execute(
                "INSERT INTO usage_reports VALUES ($1, $2, $3)",
                &[&m.node, &m.boot, &int(m.seq)],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}
