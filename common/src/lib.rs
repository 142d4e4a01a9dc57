//! Shadow's shared library: what the master, the node proxy and the edge proxy have in common.
//!
//! # Layout
//! - [`task`], [`node`], [`lease`], [`acme`], [`status`], [`usage`], [`watch`], [`error`]: the
//!   wire types of the master's API.
//! - [`client`]: a typed client for that API.
//! - [`state`] and [`follower`]: a local copy of the master's state kept current by its watch.
//! - [`config`]: TOML file + `SHADOW_*` environment + flags, parsed once at start-up.
//! - [`placement`]: which node a task goes to (rendezvous hashing), for edges and master.
//! - [`telemetry`]: tracing set-up.
#![forbid(unsafe_code)]

pub mod acme;
pub mod backoff;
pub mod client;
pub mod config;
pub mod error;
pub mod follower;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod proxy;
pub mod state;
pub mod status;
pub mod task;
pub mod telemetry;
pub mod usage;
pub mod watch;

/// Resolves on Ctrl-C or SIGTERM, for graceful shutdown of the binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
