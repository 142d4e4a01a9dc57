//! A real master, in-process, on a loopback socket, with a data dir that outlives restarts.

use std::{path::PathBuf, time::Duration};

use shadow_common::client::MasterClient;
use shadow_master::MasterConfig;
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

/// The token tests use; the master requires it.
pub const TOKEN: &str = "test-token-0123456789";

pub struct MasterHandle {
    pub url: String,
    pub client: MasterClient,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), shadow_master::RunError>>>,
}

/// Options for [`spawn`]; the defaults suit most tests.
#[derive(Clone)]
pub struct MasterOptions {
    pub heartbeat_interval: Duration,
    pub token: Option<String>,
    /// A PostgreSQL database instead of SQLite; with `SHADOW_TEST_STORE=postgres` every master
    /// gets one of its own (kept across its restarts).
    pub database_url: Option<String>,
    /// SQLite in the data dir even with `SHADOW_TEST_STORE=postgres`.
    pub sqlite: bool,
}

impl Default for MasterOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            token: Some(TOKEN.to_string()),
            database_url: None,
            sqlite: false,
        }
    }
}

/// Starts a master with a fresh data dir.
pub async fn spawn(opts: MasterOptions) -> MasterHandle {
    let dir = tempfile::tempdir().expect("temp dir");
    spawn_in(dir, opts).await
}

/// Starts a master on an existing data dir (a restart).
pub async fn spawn_in(dir: TempDir, opts: MasterOptions) -> MasterHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let mut config = MasterConfig::new(PathBuf::from(dir.path()));
    config.heartbeat_interval_ms = opts.heartbeat_interval.as_millis() as u64;
    config.api_token = opts.token.clone();
    config.database_url = match opts.database_url.clone() {
        Some(url) => Some(url),
        None if crate::postgres::wanted() && !opts.sqlite => {
            // The data dir remembers its database, so a restart finds the same state.
            let file = dir.path().join("test-database-url");
            match std::fs::read_to_string(&file) {
                Ok(url) => Some(url),
                Err(_) => {
                    let url = crate::postgres::database().await;
                    std::fs::write(&file, &url).expect("remember the database");
                    Some(url)
                }
            }
        }
        None => None,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(shadow_master::run(config, listener, async {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}");
    MasterHandle {
        client: MasterClient::new(url.clone(), opts.token),
        url,
        dir,
        stop: Some(tx),
        join: Some(join),
    }
}

impl MasterHandle {
    /// The master's socket address (for a relay in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("http://")
            .parse()
            .expect("the master's URL is http://IP:PORT")
    }

    /// Stops the master and hands back its data dir for a restart.
    pub async fn stop(mut self) -> TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.expect("master task").expect("master ran cleanly");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// A raw HTTP client with the token, for checking status codes and bodies exactly.
    pub fn raw(&self) -> RawClient {
        RawClient {
            base: self.url.clone(),
            http: reqwest::Client::new(),
            token: Some(TOKEN.to_string()),
        }
    }
}

impl Drop for MasterHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Plain requests, answering `(status, JSON body)`.
pub struct RawClient {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl RawClient {
    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }
    pub fn with_token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request reaches the master");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }
}
