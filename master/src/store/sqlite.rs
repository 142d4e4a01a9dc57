//! The SQLite [`Store`]: one file, `state.db`, under the master's data dir.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use shadow_common::{acme::AcmeRecord, lease::Lease, node::NodeRegistration, task::Task};

use super::{Snapshot, Store, StoreError};

pub struct SqliteStore {
    conn: Connection,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (task_id TEXT PRIMARY KEY, node TEXT NOT NULL, token INTEGER NOT NULL, expires_at INTEGER NOT NULL, granted_at INTEGER NOT NULL DEFAULT 0, ttl_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS acme (key TEXT PRIMARY KEY, body TEXT NOT NULL);
";

impl SqliteStore {
    /// Opens (creating if needed) `state.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Db(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let path = dir.join("state.db");
        create_private(&path)?;
        let conn = Connection::open(&path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        // Tasks carry their env (secrets included): owner only. SQLite gives its -wal and -shm
        // files the database file's mode.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| {
                    StoreError::Db(format!(
                        "cannot make {} readable by its owner only: {e}",
                        path.display()
                    ))
                },
            )?;
        }
        // WAL + FULL: a write is on disk before the call returns, so a lease token once handed
        // out is never handed out again, even after a power loss (NORMAL could lose the last
        // commits, and with them the advance of `next_token`). Writes are few: renewals are
        // not written.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        add_lease_columns(&conn)?;
        Ok(Self { conn })
    }
}

/// Creates `path` with mode 0600 if it does not exist, so the database is never readable by
/// others, not even between its creation and a chmod.
pub(crate) fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Db(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// Databases written before leases carried their grant time and TTL get the two columns.
fn add_lease_columns(conn: &Connection) -> Result<(), StoreError> {
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info('leases')")
        .map_err(db)?;
    let have: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for col in ["granted_at", "ttl_ms"] {
        if !have.iter().any(|h| h == col) {
            conn.execute_batch(&format!(
                "ALTER TABLE leases ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0"
            ))
            .map_err(db)?;
        }
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        let mut st = self.conn.prepare("SELECT body FROM tasks").map_err(db)?;
        for body in st.query_map([], |r| r.get::<_, String>(0)).map_err(db)? {
            let body = body.map_err(db)?;
            snap.tasks
                .push(serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        let mut st = self.conn.prepare("SELECT body FROM nodes").map_err(db)?;
        for body in st.query_map([], |r| r.get::<_, String>(0)).map_err(db)? {
            let body = body.map_err(db)?;
            snap.nodes
                .push(serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        let mut st = self
            .conn
            .prepare("SELECT task_id, node, token, expires_at, granted_at, ttl_ms FROM leases")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(Lease {
                    task_id: r.get(0)?,
                    node: r.get(1)?,
                    token: r.get::<_, i64>(2)? as u64,
                    expires_at: r.get::<_, i64>(3)? as u64,
                    granted_at: r.get::<_, i64>(4)? as u64,
                    ttl_ms: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(db)?;
        for l in rows {
            snap.leases.push(l.map_err(db)?);
        }
        let next: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'next_token'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        snap.next_token = next.map_or(1, |n| n as u64);
        let mut st = self
            .conn
            .prepare("SELECT key, body FROM acme")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(db)?;
        for row in rows {
            let (key, body) = row.map_err(db)?;
            let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("acme {key}: {e}"));
            if key == ACCOUNT {
                snap.acme_account = Some(serde_json::from_str(&body).map_err(corrupt)?);
            } else {
                snap.acme
                    .push(serde_json::from_str(&body).map_err(corrupt)?);
            }
        }
        Ok(snap)
    }

    fn put_task(&mut self, task: &Task) -> Result<(), StoreError> {
        let body = serde_json::to_string(task).map_err(|e| StoreError::Db(e.to_string()))?;
        self.conn
            .execute(
                "INSERT INTO tasks (id, body) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET body = ?2",
                params![task.id, body],
            )
            .map_err(db)?;
        Ok(())
    }

    fn delete_task(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM tasks WHERE id = ?1", params![id])
            .map_err(db)?;
        Ok(())
    }

    fn put_node(&mut self, node: &NodeRegistration) -> Result<(), StoreError> {
        let body = serde_json::to_string(node).map_err(|e| StoreError::Db(e.to_string()))?;
        self.conn
            .execute(
                "INSERT INTO nodes (id, body) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET body = ?2",
                params![node.id, body],
            )
            .map_err(db)?;
        Ok(())
    }

    fn delete_node(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM nodes WHERE id = ?1", params![id])
            .map_err(db)?;
        Ok(())
    }

    fn put_lease(&mut self, lease: &Lease, next_token: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        tx.execute(
            "INSERT INTO leases (task_id, node, token, expires_at, granted_at, ttl_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(task_id) DO UPDATE SET node = ?2, token = ?3, expires_at = ?4,
             granted_at = ?5, ttl_ms = ?6",
            params![
                lease.task_id,
                lease.node,
                lease.token as i64,
                lease.expires_at as i64,
                lease.granted_at as i64,
                lease.ttl_ms as i64
            ],
        )
        .map_err(db)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_token', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, ?1)",
            params![next_token as i64],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn delete_lease(&mut self, task_id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM leases WHERE task_id = ?1", params![task_id])
            .map_err(db)?;
        Ok(())
    }

    fn put_acme(&mut self, record: &AcmeRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(record).map_err(|e| StoreError::Db(e.to_string()))?;
        self.put_acme_body(&record.key(), &body)
    }

    fn delete_acme(&mut self, key: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM acme WHERE key = ?1", params![key])
            .map_err(db)?;
        Ok(())
    }

    fn put_acme_account(&mut self, credentials: &serde_json::Value) -> Result<(), StoreError> {
        self.put_acme_body(ACCOUNT, &credentials.to_string())
    }

    fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        // One read transaction: a consistent view while a master writes.
        self.conn.execute_batch("BEGIN DEFERRED").map_err(db)?;
        let snap = self.load();
        let _ = self.conn.execute_batch("COMMIT");
        snap
    }

    fn import(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        for t in &snap.tasks {
            tx.execute(
                "INSERT INTO tasks (id, body) VALUES (?1, ?2)",
                params![t.id, body(t)?],
            )
            .map_err(db)?;
        }
        for n in &snap.nodes {
            tx.execute(
                "INSERT INTO nodes (id, body) VALUES (?1, ?2)",
                params![n.id, body(n)?],
            )
            .map_err(db)?;
        }
        for l in &snap.leases {
            tx.execute(
                "INSERT INTO leases (task_id, node, token, expires_at, granted_at, ttl_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    l.task_id,
                    l.node,
                    l.token as i64,
                    l.expires_at as i64,
                    l.granted_at as i64,
                    l.ttl_ms as i64
                ],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_token', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            params![snap.next_token as i64],
        )
        .map_err(db)?;
        for r in &snap.acme {
            tx.execute(
                "INSERT INTO acme (key, body) VALUES (?1, ?2)",
                params![r.key(), body(r)?],
            )
            .map_err(db)?;
        }
        if let Some(a) = &snap.acme_account {
            tx.execute(
                "INSERT INTO acme (key, body) VALUES (?1, ?2)",
                params![ACCOUNT, a.to_string()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}

/// A record as its `body` column holds it.
fn body<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(e.to_string()))
}
/// The `acme` row holding the account; every other row is a record under its own key.
const ACCOUNT: &str = "account";

impl SqliteStore {
    fn put_acme_body(&mut self, key: &str, body: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO acme (key, body) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET body = ?2",
                params![key, body],
            )
            .map_err(db)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_private_from_its_creation_and_every_commit_is_synced() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let mode = std::fs::metadata(dir.path().join("state.db"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("mode");
        assert_eq!(mode, 0o600);
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(sync, 2, "synchronous=FULL");
    }
}
