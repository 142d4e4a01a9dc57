//! The master's configuration: flags, `SHADOW_*` variables and an optional TOML file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// What `shadow-master` does besides serving the API.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Write the whole state (tasks with their secrets, nodes, leases, ACME, usage) as JSON, to
    /// stdout or --out (created mode 0600); the master may be running.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load an export into this data dir, which must be empty; start the master afterwards.
    Import { file: PathBuf },
}

/// Command line; every option can also come from the environment or the config file.
#[derive(Debug, clap::Parser, Serialize)]
#[command(
    name = "shadow-master",
    version,
    about = "Shadow's master: tasks, nodes and volume leases over a REST API"
)]
pub struct Cli {
    /// What to do; without one, serve the API.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
    /// TOML config file (keys as the long flags, with '_').
    #[arg(long, env = "SHADOW_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "SHADOW_MASTER_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// A PostgreSQL database for the state instead of SQLite in the data dir, e.g.
    /// postgres://shadow:PASSWORD@db.internal/shadow (keep the password out of the flag: use
    /// the variable or the file) [default: unset].
    #[arg(long, env = "SHADOW_DATABASE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Where the state database lives [default: ./shadow-data].
    #[arg(long, env = "SHADOW_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Expected node heartbeat interval; 3 missed = unhealthy [default: 1000].
    #[arg(long, env = "SHADOW_HEARTBEAT_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// How long after a lease's expiry it stays refused to other nodes, for the old holder's stop
    /// [default: 500].
    #[arg(long, env = "SHADOW_LEASE_GRACE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_grace_ms: Option<u64>,
    /// Bearer token every API call must carry; unset = loopback only. Env only: not a flag, so it
    /// never shows in `ps`.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub database_url: Option<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "default_lease_grace_ms")]
    pub lease_grace_ms: u64,
    #[serde(default)]
    pub api_token: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./shadow-data")
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_lease_grace_ms() -> u64 {
    crate::registry::DEFAULT_LEASE_GRACE.as_millis() as u64
}

impl MasterConfig {
    /// Defaults for `data_dir`, for tests and embedding.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: default_listen(),
            data_dir,
            database_url: None,
            heartbeat_interval_ms: default_heartbeat_ms(),
            lease_grace_ms: default_lease_grace_ms(),
            api_token: None,
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }

    pub fn lease_grace(&self) -> Duration {
        Duration::from_millis(self.lease_grace_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigCheck {
    #[error("refusing to listen on {0} without an API token: set SHADOW_API_TOKEN, or listen on 127.0.0.1")]
    TokenRequired(SocketAddr),
    #[error(
        "SHADOW_API_TOKEN is set but empty; set a long random value (e.g. `openssl rand -hex 32`)"
    )]
    EmptyToken,
}

impl MasterConfig {
    /// An open master on a non-loopback address would let anyone run containers.
    pub fn check(&self, bound: SocketAddr) -> Result<(), ConfigCheck> {
        match &self.api_token {
            Some(t) if t.trim().is_empty() => Err(ConfigCheck::EmptyToken),
            None if !bound.ip().is_loopback() => Err(ConfigCheck::TokenRequired(bound)),
            _ => Ok(()),
        }
    }
}
