//! The SQLite [`UsageStore`]: `usage.db` beside `state.db`, so frequent usage writes never
//! wait for the registry's database.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use shadow_common::usage::{UsageDelta, UsageReport};

use super::{ReportMark, UsageStore};
use crate::store::StoreError;

pub struct SqliteUsage {
    conn: Connection,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
  task_id TEXT NOT NULL, hour INTEGER NOT NULL,
  running_ms INTEGER NOT NULL, frozen_ms INTEGER NOT NULL, cold_starts INTEGER NOT NULL,
  requests INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
  cpu_ms INTEGER NOT NULL, peak_memory_bytes INTEGER NOT NULL,
  PRIMARY KEY (task_id, hour));
CREATE TABLE IF NOT EXISTS usage_reports (
  node TEXT NOT NULL, boot TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (node, boot));
";

impl SqliteUsage {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Db(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("usage.db");
        crate::store::sqlite::create_private(&path)?;
        let conn = Connection::open(&path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Db(format!("cannot restrict {}: {e}", path.display())))?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(Self { conn })
    }
}

/// SQLite integers are signed; usage never comes near the limit.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds one delta to its app's hour (summed; the peak is a maximum).
fn add(conn: &Connection, d: &UsageDelta) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (task_id, hour) DO UPDATE SET
           running_ms = running_ms + excluded.running_ms,
           frozen_ms = frozen_ms + excluded.frozen_ms,
           cold_starts = cold_starts + excluded.cold_starts,
           requests = requests + excluded.requests,
           bytes_in = bytes_in + excluded.bytes_in,
           bytes_out = bytes_out + excluded.bytes_out,
           cpu_ms = cpu_ms + excluded.cpu_ms,
           peak_memory_bytes = max(peak_memory_bytes, excluded.peak_memory_bytes)",
    )
    .map_err(db)?
    .execute(params![
        d.task_id,
        int(d.hour),
        int(d.running_ms),
        int(d.frozen_ms),
        int(d.cold_starts),
        int(d.requests),
        int(d.bytes_in),
        int(d.bytes_out),
        int(d.cpu_ms),
        int(d.peak_memory_bytes)
    ])
    .map_err(db)?;
    Ok(())
}

impl UsageStore for SqliteUsage {
    fn apply(&mut self, report: &UsageReport) -> Result<bool, StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT seq FROM usage_reports WHERE node = ?1 AND boot = ?2",
                params![report.node, report.boot],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if last.is_some_and(|l| l >= int(report.seq)) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO usage_reports (node, boot, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (node, boot) DO UPDATE SET seq = excluded.seq",
            params![report.node, report.boot, int(report.seq)],
        )
        .map_err(db)?;
        for d in &report.deltas {
            add(&tx, d)?;
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
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT task_id, hour, running_ms, frozen_ms, cold_starts, requests, bytes_in,
                        bytes_out, cpu_ms, peak_memory_bytes FROM usage
                 WHERE (?1 IS NULL OR task_id = ?1) AND hour >= ?2 AND hour < ?3
                 ORDER BY hour, task_id",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![task, int(from), int(to)], |r| {
                let u = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok(UsageDelta {
                    task_id: r.get(0)?,
                    hour: u(1)?,
                    running_ms: u(2)?,
                    frozen_ms: u(3)?,
                    cold_starts: u(4)?,
                    requests: u(5)?,
                    bytes_in: u(6)?,
                    bytes_out: u(7)?,
                    cpu_ms: u(8)?,
                    peak_memory_bytes: u(9)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn reports(&mut self) -> Result<Vec<ReportMark>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT node, boot, seq FROM usage_reports ORDER BY node, boot")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(ReportMark {
                    node: r.get(0)?,
                    boot: r.get(1)?,
                    seq: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn import(&mut self, rows: &[UsageDelta], marks: &[ReportMark]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        // Into an empty store, adding is inserting.
        for d in rows {
            add(&tx, d)?;
        }
        for m in marks {
            tx.execute(
                "INSERT INTO usage_reports (node, boot, seq) VALUES (?1, ?2, ?3)",
                params![m.node, m.boot, int(m.seq)],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, running_ms: u64) -> UsageReport {
        UsageReport {
            node: "n1".into(),
            boot: "b".into(),
            seq,
            deltas: vec![UsageDelta {
                task_id: "t".into(),
                hour: 7200,
                running_ms,
                peak_memory_bytes: running_ms * 10,
                ..UsageDelta::default()
            }],
        }
    }

    #[test]
    fn a_report_sent_twice_counts_once_and_rows_add_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = SqliteUsage::open(dir.path()).expect("open");
        assert!(s.apply(&report(1, 1000)).expect("apply"));
        assert!(
            !s.apply(&report(1, 1000)).expect("again"),
            "a retry counted twice"
        );
        assert!(s.apply(&report(2, 500)).expect("next"));
        drop(s);
        let mut s = SqliteUsage::open(dir.path()).expect("reopen");
        let rows = s.query(Some("t"), 0, u64::MAX).expect("query");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].running_ms, 1500);
        assert_eq!(rows[0].peak_memory_bytes, 10_000, "the peak is a maximum");
        assert!(s.query(Some("t"), 0, 7200).expect("before").is_empty());
        let mode = std::fs::metadata(dir.path().join("usage.db"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("mode");
        assert_eq!(mode, 0o600);
    }
}
