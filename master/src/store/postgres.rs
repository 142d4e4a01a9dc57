//! The PostgreSQL [`Store`] (`SHADOW_DATABASE_URL=postgres://…`): the same records as SQLite, in
//! a schema that versioned migrations bring up to date at start, one master at a time (an
//! advisory lock), so masters starting together do not race.
//!
//! Until masters share the database as one fleet, a master holds a second advisory lock for its
//! whole life and a second master on the same database refuses to start: two masters with their
//! own memory would grant one lease twice.

use postgres::{Client, NoTls};
use shadow_common::{acme::AcmeRecord, lease::Lease, node::NodeRegistration, task::Task};

use super::{Snapshot, Store, StoreError};

/// Advisory lock keys: migrations, and the one master per database.
const MIGRATION_LOCK: i64 = 0x5348_4144_0001;
const MASTER_LOCK: i64 = 0x5348_4144_0002;

/// The schema, one step per version; a step never changes once released.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE tasks (id TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE nodes (id TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE leases (task_id TEXT PRIMARY KEY, node TEXT NOT NULL, token BIGINT NOT NULL,
       expires_at BIGINT NOT NULL, granted_at BIGINT NOT NULL, ttl_ms BIGINT NOT NULL);
     CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
     CREATE TABLE acme (key TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE usage (task_id TEXT NOT NULL, hour BIGINT NOT NULL,
       running_ms BIGINT NOT NULL, frozen_ms BIGINT NOT NULL, cold_starts BIGINT NOT NULL,
       requests BIGINT NOT NULL, bytes_in BIGINT NOT NULL, bytes_out BIGINT NOT NULL,
       cpu_ms BIGINT NOT NULL, peak_memory_bytes BIGINT NOT NULL, PRIMARY KEY (task_id, hour));
     CREATE TABLE usage_reports (node TEXT NOT NULL, boot TEXT NOT NULL, seq BIGINT NOT NULL,
       PRIMARY KEY (node, boot));",
)];

pub(crate) fn db(e: postgres::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Connects and brings the schema up to date.
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls).map_err(|e| {
        StoreError::Db(format!(
            "cannot connect to PostgreSQL ({e}); check SHADOW_DATABASE_URL and that the server is up"
        ))
    })?;
    migrate(&mut client)?;
    Ok(client)
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    let result = (|| {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .map_err(db)?;
        for (version, sql) in MIGRATIONS {
            let done = client
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .map_err(db)?
                .is_some();
            if done {
                continue;
            }
            let mut tx = client.transaction().map_err(db)?;
            tx.batch_execute(sql).map_err(db)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            tracing::info!(version, "database schema migrated");
        }
        Ok(())
    })();
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

pub struct PostgresStore {
    client: Client,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn body<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The `acme` row holding the account; every other row is a record under its own key.
const ACCOUNT: &str = "account";

impl PostgresStore {
    /// Connects and migrates without taking the database (an export of a running master's).
    pub fn open_shared(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: connect(url)?,
        })
    }

    /// Connects, migrates, and takes the database for this master alone.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut client = connect(url)?;
        // A master restarting right away may find its old connection not yet closed: 3 s.
        for attempt in 0..30 {
            let mine: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&MASTER_LOCK])
                .map_err(db)?
                .get(0);
            if mine {
                return Ok(Self { client });
            }
            if attempt < 29 {
                // This runs on a plain thread (start-up, the store's thread), never a worker.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Err(StoreError::Db(
            "another shadow-master already uses this database; run one master per database (docs/operations.md)".into(),
        ))
    }

    fn upsert(&mut self, table: &str, key: &str, text: &str) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {table} VALUES ($1, $2) ON CONFLICT ({}) DO UPDATE SET body = $2",
            if table == "acme" { "key" } else { "id" }
        );
        self.client.execute(&sql, &[&key, &text]).map_err(db)?;
        Ok(())
    }

    fn delete(&mut self, table: &str, column: &str, key: &str) -> Result<(), StoreError> {
        self.client
            .execute(&format!("DELETE FROM {table} WHERE {column} = $1"), &[&key])
            .map_err(db)?;
        Ok(())
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        for row in self
            .client
            .query("SELECT body FROM tasks", &[])
            .map_err(db)?
        {
            snap.tasks.push(parse("task", row.get(0))?);
        }
        for row in self
            .client
            .query("SELECT body FROM nodes", &[])
            .map_err(db)?
        {
            snap.nodes.push(parse("node", row.get(0))?);
        }
        for row in self
            .client
            .query(
                "SELECT task_id, node, token, expires_at, granted_at, ttl_ms FROM leases",
                &[],
            )
            .map_err(db)?
        {
            let u = |i: usize| row.get::<_, i64>(i).max(0) as u64;
            snap.leases.push(Lease {
                task_id: row.get(0),
                node: row.get(1),
                token: u(2),
                expires_at: u(3),
                granted_at: u(4),
                ttl_ms: u(5),
            });
        }
        snap.next_token = self
            .client
            .query_opt("SELECT value FROM meta WHERE key = 'next_token'", &[])
            .map_err(db)?
            .map_or(1, |r| r.get::<_, i64>(0).max(1) as u64);
        for row in self
            .client
            .query("SELECT key, body FROM acme", &[])
            .map_err(db)?
        {
            let key: String = row.get(0);
            if key == ACCOUNT {
                snap.acme_account = Some(parse("acme account", row.get(1))?);
            } else {
                snap.acme.push(parse(&format!("acme {key}"), row.get(1))?);
            }
        }
        Ok(snap)
    }

    fn put_task(&mut self, task: &Task) -> Result<(), StoreError> {
        self.upsert("tasks", &task.id, &body(task)?)
    }
    fn delete_task(&mut self, id: &str) -> Result<(), StoreError> {
        self.delete("tasks", "id", id)
    }
    fn put_node(&mut self, node: &NodeRegistration) -> Result<(), StoreError> {
        self.upsert("nodes", &node.id, &body(node)?)
    }
    fn delete_node(&mut self, id: &str) -> Result<(), StoreError> {
        self.delete("nodes", "id", id)
    }

    fn put_lease(&mut self, lease: &Lease, next_token: u64) -> Result<(), StoreError> {
        let mut tx = self.client.transaction().map_err(db)?;
        tx.execute(
            "INSERT INTO leases VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (task_id) DO UPDATE SET node = $2, token = $3, expires_at = $4,
             granted_at = $5, ttl_ms = $6",
            &[
                &lease.task_id,
                &lease.node,
                &int(lease.token),
                &int(lease.expires_at),
                &int(lease.granted_at),
                &int(lease.ttl_ms),
            ],
        )
        .map_err(db)?;
        tx.execute(
            "INSERT INTO meta VALUES ('next_token', $1)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, $1)",
            &[&int(next_token)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    fn delete_lease(&mut self, task_id: &str) -> Result<(), StoreError> {
        self.delete("leases", "task_id", task_id)
    }
    fn put_acme(&mut self, record: &AcmeRecord) -> Result<(), StoreError> {
        self.upsert("acme", &record.key(), &body(record)?)
    }
    fn delete_acme(&mut self, key: &str) -> Result<(), StoreError> {
        self.delete("acme", "key", key)
    }
    fn put_acme_account(&mut self, credentials: &serde_json::Value) -> Result<(), StoreError> {
        self.upsert("acme", ACCOUNT, &credentials.to_string())
    }

    fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(db)?;
        let snap = self.load();
        let _ = self.client.batch_execute("COMMIT");
        snap
    }

    fn import(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let mut tx = self.client.transaction().map_err(db)?;
        for t in &snap.tasks {
            tx.execute("INSERT INTO tasks VALUES ($1, $2)", &[&t.id, &body(t)?])
                .map_err(db)?;
        }
        for n in &snap.nodes {
            tx.execute("INSERT INTO nodes VALUES ($1, $2)", &[&n.id, &body(n)?])
                .map_err(db)?;
        }
        for l in &snap.leases {
            tx.execute(
                "INSERT INTO leases VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &l.task_id,
                    &l.node,
                    &int(l.token),
                    &int(l.expires_at),
                    &int(l.granted_at),
                    &int(l.ttl_ms),
                ],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO meta VALUES ('next_token', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
            &[&int(snap.next_token)],
        )
        .map_err(db)?;
        for r in &snap.acme {
            tx.execute("INSERT INTO acme VALUES ($1, $2)", &[&r.key(), &body(r)?])
                .map_err(db)?;
        }
        if let Some(a) = &snap.acme_account {
            tx.execute(
                "INSERT INTO acme VALUES ($1, $2)",
                &[&ACCOUNT, &a.to_string()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}
