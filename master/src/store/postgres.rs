//! The PostgreSQL [`Store`] (`SHADOW_DATABASE_URL=postgres://…`), which several masters share:
//! the same records as SQLite, in a schema that versioned migrations bring up to date at start,
//! one master at a time (an advisory lock), so masters starting together do not race.
//!
//! Every write is one transaction under one advisory lock, checks that the writing master had
//! seen every earlier write (the change log's head), and appends the records it touched to the
//! change log (`changes`), then `NOTIFY`s; each master follows the log ([`listen`]) and applies
//! what others wrote. So one master decides each lease grant on the newest state, tokens come
//! from one counter, and a watch's revision means the same on every master.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use postgres::{fallible_iterator::FallibleIterator, types::ToSql, Client};
use shadow_common::{
    acme::AcmeRecord, lease::Lease, node::NodeRegistration, status::AppStatus, task::Task,
};

use super::{Change, Changed, NodeLive, SharedLoad, Snapshot, Store, StoreError};

/// Advisory lock keys: migrations, and writes.
const MIGRATION_LOCK: i64 = 0x5348_4144_0001;
const WRITE_LOCK: i64 = 0x5348_4144_0003;
/// The channel masters `LISTEN` on for new change-log entries.
const CHANNEL: &str = "shadow_changes";

/// The schema, one step per version; a step never changes once released.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        "CREATE TABLE changes (revision BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL,
       key TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now());
     CREATE TABLE node_live (id TEXT PRIMARY KEY, running TEXT NOT NULL,
       load DOUBLE PRECISION NOT NULL, healthy BOOLEAN NOT NULL, at_ms BIGINT NOT NULL);
     CREATE TABLE app_status (task_id TEXT NOT NULL, node TEXT NOT NULL, body TEXT NOT NULL,
       PRIMARY KEY (task_id, node));
     CREATE TABLE cluster (id TEXT NOT NULL);
     INSERT INTO cluster VALUES (md5(random()::text || clock_timestamp()::text));
     INSERT INTO meta VALUES ('pruned_below', 0);",
    ),
];

pub(crate) fn db(e: postgres::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Connects and brings the schema up to date.
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = super::pg_connect::open(url)?;
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
    url: String,
    /// Inside a write ([`Store::begin`] .. [`Store::commit`]).
    in_write: bool,
    /// The change log's head as the open write has made it.
    write_head: u64,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    v.max(0) as u64
}

fn body<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The `acme` row holding the account; every other row is a record under its own key.
const ACCOUNT: &str = "account";

/// How a status is named in the change log.
fn status_key(task: &str, node: &str) -> String {
    format!("{task}/{node}")
}

fn lease_row(row: &postgres::Row) -> Lease {
    Lease {
        task_id: row.get(0),
        node: row.get(1),
        token: uint(row.get(2)),
        expires_at: uint(row.get(3)),
        granted_at: uint(row.get(4)),
        ttl_ms: uint(row.get(5)),
    }
}

const LEASE_COLUMNS: &str = "task_id, node, token, expires_at, granted_at, ttl_ms";

/// A lease's numbers as stored: token, expires_at, granted_at, ttl_ms.
fn lease_numbers(l: &Lease) -> [i64; 4] {
    [
        int(l.token),
        int(l.expires_at),
        int(l.granted_at),
        int(l.ttl_ms),
    ]
}

/// A lease's row as statement parameters `$1..$6`, in the table's column order.
fn lease_params<'a>(l: &'a Lease, numbers: &'a [i64; 4]) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![&l.task_id, &l.node];
    p.extend(numbers.iter().map(|v| v as &(dyn ToSql + Sync)));
    p
}

impl PostgresStore {
    /// Connects and migrates (several masters may share the database).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: connect(url)?,
            url: url.to_owned(),
            in_write: false,
            write_head: 0,
        })
    }

    /// The connection, made again if the server dropped it (a restart, a failover).
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_closed() {
            // Whatever write was open died with the connection.
            self.in_write = false;
            tracing::warn!("connection to PostgreSQL lost; connecting again");
            self.client = connect(&self.url)?;
        }
        Ok(&mut self.client)
    }

    fn changed(&mut self, kind: &str, key: &str) -> Result<(), StoreError> {
        let row = self
            .client()?
            .query_one(
                "INSERT INTO changes (kind, key) VALUES ($1, $2) RETURNING revision",
                &[&kind, &key],
            )
            .map_err(db)?;
        self.write_head = self.write_head.max(uint(row.get(0)));
        Ok(())
    }

    fn upsert(&mut self, table: &str, key: &str, text: &str) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {table} VALUES ($1, $2) ON CONFLICT ({}) DO UPDATE SET body = $2",
            if table == "acme" { "key" } else { "id" }
        );
        self.client()?.execute(&sql, &[&key, &text]).map_err(db)?;
        Ok(())
    }

    fn delete(&mut self, table: &str, column: &str, key: &str) -> Result<(), StoreError> {
        self.client()?
            .execute(&format!("DELETE FROM {table} WHERE {column} = $1"), &[&key])
            .map_err(db)?;
        Ok(())
    }

    /// After a lease row is written: the token counter moves past it (never back), and the
    /// change is logged.
    fn lease_granted(&mut self, task_id: &str, next_token: u64) -> Result<(), StoreError> {
        self.client()?
            .execute(
                "INSERT INTO meta VALUES ('next_token', $1)
                 ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, $1)",
                &[&int(next_token)],
            )
            .map_err(db)?;
        self.changed("lease", task_id)
    }

    fn head(&mut self) -> Result<u64, StoreError> {
        let row = self
            .client()?
            .query_one("SELECT coalesce(max(revision), 0) FROM changes", &[])
            .map_err(db)?;
        Ok(uint(row.get(0)))
    }

    fn next_token(&mut self) -> Result<u64, StoreError> {
        Ok(self
            .client()?
            .query_opt("SELECT value FROM meta WHERE key = 'next_token'", &[])
            .map_err(db)?
            .map_or(1, |r| uint(r.get(0)).max(1)))
    }

    fn live(&mut self, id: Option<&str>) -> Result<Vec<(String, NodeLive)>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT id, running, load, healthy, at_ms FROM node_live
                 WHERE $1::text IS NULL OR id = $1",
                &[&id],
            )
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.get(0),
                    NodeLive {
                        running: parse("node_live.running", r.get(1))?,
                        load: r.get(2),
                        healthy: r.get(3),
                        at_ms: uint(r.get(4)),
                    },
                ))
            })
            .collect()
    }

    fn statuses(&mut self, key: Option<(&str, &str)>) -> Result<Vec<AppStatus>, StoreError> {
        let (task, node) = key.unzip();
        let rows = self
            .client()?
            .query(
                "SELECT body FROM app_status
                 WHERE $1::text IS NULL OR (task_id = $1 AND node = $2)",
                &[&task, &node],
            )
            .map_err(db)?;
        rows.iter().map(|r| parse("app_status", r.get(0))).collect()
    }

    /// The record one change-log entry names, as it is now.
    fn record(&mut self, kind: &str, key: &str) -> Result<Option<Changed>, StoreError> {
        let c = self.client()?;
        let one = |c: &mut Client, sql: &str| -> Result<Option<String>, StoreError> {
            Ok(c.query_opt(sql, &[&key]).map_err(db)?.map(|r| r.get(0)))
        };
        Ok(Some(match kind {
            "task" => Changed::Task {
                id: key.to_owned(),
                now: one(c, "SELECT body FROM tasks WHERE id = $1")?
                    .map(|b| parse("task", &b))
                    .transpose()?,
            },
            "node" => {
                let reg = one(c, "SELECT body FROM nodes WHERE id = $1")?
                    .map(|b| parse("node", &b))
                    .transpose()?;
                let live = self.live(Some(key))?.pop().map(|(_, l)| l);
                Changed::Node {
                    id: key.to_owned(),
                    reg,
                    live,
                }
            }
            "lease" | "lease_lapsed" => {
                let now = c
                    .query_opt(
                        &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE task_id = $1"),
                        &[&key],
                    )
                    .map_err(db)?
                    .map(|r| lease_row(&r));
                Changed::Lease {
                    task_id: key.to_owned(),
                    now,
                    lapsed: kind == "lease_lapsed",
                    next_token: self.next_token()?,
                }
            }
            "acme" => Changed::Acme {
                key: key.to_owned(),
                now: one(c, "SELECT body FROM acme WHERE key = $1")?
                    .map(|b| parse("acme", &b))
                    .transpose()?,
            },
            "acme_account" => Changed::AcmeAccount(
                one(c, "SELECT body FROM acme WHERE key = $1")?
                    .map(|b| parse("acme account", &b))
                    .transpose()?,
            ),
            "status" => {
                let Some((task, node)) = key.split_once('/') else {
                    return Ok(None);
                };
                Changed::Status {
                    task: task.to_owned(),
                    node: node.to_owned(),
                    now: self.statuses(Some((task, node)))?.pop(),
                }
            }
            // Written by a newer master; this one has nothing to apply.
            _ => return Ok(None),
        }))
    }

    /// Reads in one consistent snapshot of the database.
    fn consistently<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.in_write {
            // Inside a write, which holds the write lock: nobody else changes anything.
            return f(self);
        }
        self.client()?
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(db)?;
        let out = f(self);
        let _ = self.client.batch_execute("COMMIT");
        out
    }
}

/// Follows the change log: a thread `LISTEN`ing on the database that wakes `notify` for every
/// new entry (and after every reconnect, in case one was missed), until `stop` is set.
pub fn listen(url: &str, notify: Arc<tokio::sync::Notify>, stop: Arc<AtomicBool>) {
    let url = url.to_owned();
    let spawned = std::thread::Builder::new()
        .name("shadow-listen".into())
        .spawn(move || {
            let mut backoff = shadow_common::backoff::Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
            );
            while !stop.load(Ordering::Relaxed) {
                let mut client = match super::pg_connect::open(&url).and_then(|mut c| {
                    c.batch_execute(&format!("LISTEN {CHANNEL}"))
                        .map(|()| c)
                        .map_err(db)
                }) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for other masters' changes; retrying");
                        // A plain thread, never an async worker.
                        #[allow(clippy::disallowed_methods)]
                        std::thread::sleep(backoff.next_delay());
                        continue;
                    }
                };
                backoff.reset();
                notify.notify_one();
                while !stop.load(Ordering::Relaxed) && !client.is_closed() {
                    let mut n = client.notifications();
                    let next = n.timeout_iter(Duration::from_millis(500)).next();
                    match next {
                        Ok(Some(_)) => {
                            // Drain what else arrived: one catch-up reads them all.
                            while let Ok(Some(_)) = n.iter().next() {}
                            notify.notify_one();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the listening connection; reconnecting");
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the listening thread; other masters' changes arrive within a second instead");
    }
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let c = self.client()?;
        let mut snap = Snapshot::default();
        for row in c.query("SELECT body FROM tasks", &[]).map_err(db)? {
            snap.tasks.push(parse("task", row.get(0))?);
        }
        for row in c.query("SELECT body FROM nodes", &[]).map_err(db)? {
            snap.nodes.push(parse("node", row.get(0))?);
        }
        for row in c
            .query(&format!("SELECT {LEASE_COLUMNS} FROM leases"), &[])
            .map_err(db)?
        {
            snap.leases.push(lease_row(&row));
        }
        for row in c.query("SELECT key, body FROM acme", &[]).map_err(db)? {
            let key: String = row.get(0);
            if key == ACCOUNT {
                snap.acme_account = Some(parse("acme account", row.get(1))?);
            } else {
                snap.acme.push(parse(&format!("acme {key}"), row.get(1))?);
            }
        }
        snap.next_token = self.next_token()?;
        Ok(snap)
    }

    fn put_task(&mut self, task: &Task) -> Result<(), StoreError> {
        self.upsert("tasks", &task.id, &body(task)?)?;
        self.changed("task", &task.id)
    }
    fn delete_task(&mut self, id: &str) -> Result<(), StoreError> {
        self.delete("tasks", "id", id)?;
        self.delete("app_status", "task_id", id)?;
        self.changed("task", id)
    }
    fn put_node(&mut self, node: &NodeRegistration) -> Result<(), StoreError> {
        self.upsert("nodes", &node.id, &body(node)?)?;
        self.changed("node", &node.id)
    }
    fn delete_node(&mut self, id: &str) -> Result<(), StoreError> {
        self.delete("nodes", "id", id)?;
        self.delete("node_live", "id", id)?;
        self.delete("app_status", "node", id)?;
        self.changed("node", id)
    }

    fn put_lease(&mut self, lease: &Lease, next_token: u64) -> Result<(), StoreError> {
        let c = self.client()?;
        c.execute(
            "INSERT INTO leases VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (task_id) DO UPDATE SET node = $2, token = $3, expires_at = $4,
             granted_at = $5, ttl_ms = $6",
            &lease_params(lease, &lease_numbers(lease)),
        )
        .map_err(db)?;
        self.lease_granted(&lease.task_id, next_token)
    }

    fn delete_lease(&mut self, task_id: &str) -> Result<(), StoreError> {
        self.delete("leases", "task_id", task_id)?;
        self.changed("lease", task_id)
    }
    fn put_acme(&mut self, record: &AcmeRecord) -> Result<(), StoreError> {
        let key = record.key();
        self.upsert("acme", &key, &body(record)?)?;
        self.changed("acme", &key)
    }
    fn delete_acme(&mut self, key: &str) -> Result<(), StoreError> {
        self.delete("acme", "key", key)?;
        self.changed("acme", key)
    }
    fn put_acme_account(&mut self, credentials: &serde_json::Value) -> Result<(), StoreError> {
        self.upsert("acme", ACCOUNT, &credentials.to_string())?;
        self.changed("acme_account", ACCOUNT)
    }

    fn shared(&self) -> bool {
        true
    }

    fn load_shared(&mut self) -> Result<SharedLoad, StoreError> {
        self.consistently(|s| {
            let cluster = s
                .client()?
                .query_one("SELECT id FROM cluster", &[])
                .map_err(db)?
                .get(0);
            Ok(SharedLoad {
                snapshot: s.load()?,
                live: s.live(None)?,
                statuses: s.statuses(None)?,
                head: s.head()?,
                cluster,
            })
        })
    }

    fn begin(&mut self, expect: Option<u64>) -> Result<(), StoreError> {
        if self.in_write {
            // A write abandoned half-way (its caller went away): it changed nothing.
            self.rollback();
        }
        self.client()?.batch_execute("BEGIN").map_err(db)?;
        self.in_write = true;
        let locked = self
            .client()?
            .execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(db)
            .and_then(|_| self.head());
        match (locked, expect) {
            (Ok(head), Some(e)) if head != e => {
                self.rollback();
                Err(StoreError::Stale)
            }
            (Ok(head), _) => {
                self.write_head = head;
                Ok(())
            }
            (Err(e), _) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn commit(&mut self) -> Result<u64, StoreError> {
        let head = self.write_head;
        let c = self.client()?;
        let done = c.batch_execute(&format!("NOTIFY {CHANNEL}; COMMIT"));
        self.in_write = false;
        done.map_err(db)?;
        Ok(head)
    }

    fn rollback(&mut self) {
        self.in_write = false;
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn changes_since(&mut self, revision: u64) -> Result<Option<Vec<Change>>, StoreError> {
        self.consistently(|s| {
            let pruned_below = s
                .client()?
                .query_one("SELECT value FROM meta WHERE key = 'pruned_below'", &[])
                .map_err(db)?
                .get::<_, i64>(0);
            if int(revision) + 1 < pruned_below {
                return Ok(None);
            }
            let rows = s
                .client()?
                .query(
                    "SELECT revision, kind, key FROM changes WHERE revision > $1
                     ORDER BY revision LIMIT 10000",
                    &[&int(revision)],
                )
                .map_err(db)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let kind: String = r.get(1);
                let key: String = r.get(2);
                if let Some(what) = s.record(&kind, &key)? {
                    out.push(Change {
                        revision: uint(r.get(0)),
                        what,
                    });
                }
            }
            Ok(Some(out))
        })
    }

    fn grant_lease(
        &mut self,
        lease: &Lease,
        next_token: u64,
        seen: Option<&Lease>,
    ) -> Result<(), StoreError> {
        let c = self.client()?;
        let numbers = lease_numbers(lease);
        let mut params = lease_params(lease, &numbers);
        let written = match seen {
            None => c
                .execute(
                    "INSERT INTO leases VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    &params,
                )
                .map_err(db)?,
            Some(s) => {
                let was = [int(s.token), int(s.expires_at)];
                params.extend(was.iter().map(|v| v as &(dyn ToSql + Sync)));
                c.execute(
                    "UPDATE leases SET node = $2, token = $3, expires_at = $4, granted_at = $5,
                     ttl_ms = $6 WHERE task_id = $1 AND token = $7 AND expires_at = $8",
                    &params,
                )
                .map_err(db)?
            }
        };
        if written == 0 {
            return Err(StoreError::LeaseMoved(lease.task_id.clone()));
        }
        self.lease_granted(&lease.task_id, next_token)
    }

    fn lapse_lease(&mut self, seen: &Lease) -> Result<(), StoreError> {
        let gone = self
            .client()?
            .execute(
                "DELETE FROM leases WHERE task_id = $1 AND token = $2 AND expires_at = $3",
                &[&seen.task_id, &int(seen.token), &int(seen.expires_at)],
            )
            .map_err(db)?;
        if gone == 0 {
            return Err(StoreError::LeaseMoved(seen.task_id.clone()));
        }
        self.changed("lease_lapsed", &seen.task_id)
    }

    fn leases_of(&mut self, task_ids: &[String]) -> Result<BTreeMap<String, Lease>, StoreError> {
        let rows = self
            .client()?
            .query(
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE task_id = ANY($1)"),
                &[&task_ids],
            )
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let l = lease_row(r);
                (l.task_id.clone(), l)
            })
            .collect())
    }

    fn all_leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        let rows = self
            .client()?
            .query(&format!("SELECT {LEASE_COLUMNS} FROM leases"), &[])
            .map_err(db)?;
        Ok(rows.iter().map(lease_row).collect())
    }

    fn renew_lease_if_live(
        &mut self,
        task_id: &str,
        token: u64,
        node: Option<&str>,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let row = self
            .client()?
            .query_opt(
                "UPDATE leases SET expires_at = $4 + $5, ttl_ms = $5
                 WHERE task_id = $1 AND token = $2 AND ($3::text IS NULL OR node = $3)
                 AND expires_at > $4 RETURNING expires_at",
                &[&task_id, &int(token), &node, &int(now), &int(ttl_ms)],
            )
            .map_err(db)?;
        Ok(row.map(|r| uint(r.get(0))))
    }

    fn put_node_live(&mut self, id: &str, live: &NodeLive) -> Result<(), StoreError> {
        self.client()?
            .execute(
                "INSERT INTO node_live VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE
                 SET running = $2, load = $3, healthy = $4,
                 at_ms = GREATEST(node_live.at_ms, $5)",
                &[
                    &id,
                    &body(&live.running)?,
                    &live.load,
                    &live.healthy,
                    &int(live.at_ms),
                ],
            )
            .map_err(db)?;
        self.changed("node", id)
    }

    fn touch_node(&mut self, id: &str, at_ms: u64) -> Result<(), StoreError> {
        self.client()?
            .execute(
                "UPDATE node_live SET at_ms = GREATEST(at_ms, $2) WHERE id = $1",
                &[&id, &int(at_ms)],
            )
            .map_err(db)?;
        Ok(())
    }

    fn node_heartbeats(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT id, at_ms FROM node_live", &[])
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), uint(r.get(1)))).collect())
    }

    fn put_app_status(&mut self, status: &AppStatus, announce: bool) -> Result<(), StoreError> {
        self.client()?
            .execute(
                "INSERT INTO app_status VALUES ($1, $2, $3)
                 ON CONFLICT (task_id, node) DO UPDATE SET body = $3",
                &[&status.task_id, &status.node, &body(status)?],
            )
            .map_err(db)?;
        if announce {
            self.changed("status", &status_key(&status.task_id, &status.node))?;
        }
        Ok(())
    }

    fn now_ms(&mut self) -> Result<Option<u64>, StoreError> {
        let row = self
            .client()?
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .map_err(db)?;
        Ok(Some(uint(row.get(0))))
    }

    fn prune(&mut self, keep: u64) -> Result<(), StoreError> {
        let below = self.head()?.saturating_sub(keep);
        if below == 0 {
            return Ok(());
        }
        let c = self.client()?;
        c.execute(
            "UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'pruned_below'",
            &[&int(below)],
        )
        .map_err(db)?;
        c.execute("DELETE FROM changes WHERE revision < $1", &[&int(below)])
            .map_err(db)?;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Snapshot, StoreError> {
        self.consistently(|s| s.load())
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
                &lease_params(l, &lease_numbers(l)),
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
