//! Shadow's master: the REST API that keeps task definitions, nodes and volume leases, and the
//! watch that edges and nodes follow. It never talks to Docker.
//!
//! # Layout
//! - [`config`]: flags, environment and file.
//! - [`store`]: the durable-state seam and its SQLite implementation.
//! - [`registry`]: the working state and its rules (tasks, nodes, leases, watch).
//! - [`api`]: the warp routes over the registry; [`metrics`]: `/metrics`.
//! - [`usage`]: what each app used, per hour, as the nodes report it.
//! - [`clock`]: wall-clock time driven by tokio's clock, for leases.
#![forbid(unsafe_code)]

pub mod api;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod store;
pub mod usage;

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

pub use config::MasterConfig;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigCheck),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
}

/// The registry's store and the usage store.
pub type Stores = (Box<dyn store::Store>, Box<dyn usage::UsageStore>);

/// The stores the config names: PostgreSQL with a database URL, else SQLite in the data dir.
/// Blocking: call it off the async workers.
pub fn open_stores(config: &MasterConfig) -> Result<Stores, store::StoreError> {
    Ok(match &config.database_url {
        Some(url) => (
            Box::new(store::postgres::PostgresStore::open(url)?),
            Box::new(usage::postgres::PostgresUsage::open(url)?),
        ),
        None => (
            Box::new(store::sqlite::SqliteStore::open(&config.data_dir)?),
            Box::new(usage::sqlite::SqliteUsage::open(&config.data_dir)?),
        ),
    })
}

/// Builds the registry from the stores and the API state around it. Blocking: call it off the
/// async workers.
pub fn open_state(config: &MasterConfig) -> Result<Arc<api::AppState>, RunError> {
    let (store, usage_store) = open_stores(config)?;
    let registry = registry::Registry::open(store, config.heartbeat_interval())?
        .with_lease_grace(config.lease_grace());
    Ok(Arc::new(api::AppState {
        registry: Arc::new(registry),
        api_token: config.api_token.clone(),
        metrics: metrics::Metrics::new(),
        http: reqwest::Client::new(),
        usage: usage::UsageLedger::open(usage_store)?,
    }))
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    config: MasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let bound = listener.local_addr().map_err(RunError::Listener)?;
    config.check(bound)?;
    let state = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_state(&config))
            .await
            .map_err(|e| RunError::Store(store::StoreError::Db(e.to_string())))??
    };
    let registry = state.registry.clone();
    let ticker = tokio::spawn(async move { registry.tick_forever().await });
    // Masters sharing a database follow each other's changes.
    let stop_listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = config.database_url.as_ref().map(|url| {
        let notify = Arc::new(tokio::sync::Notify::new());
        store::postgres::listen(url, notify.clone(), stop_listening.clone());
        tokio::spawn(state.registry.clone().follow_forever(notify))
    });
    let store = if config.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    tracing::info!(%bound, store, data_dir = %config.data_dir.display(), auth = config.api_token.is_some(), "master listening");
    let closing = state.registry.clone();
    let shutdown = async move {
        shutdown.await;
        // A graceful stop waits for open requests; long polls would hold it for their wait.
        closing.close_watches();
    };
    warp::serve(api::routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    ticker.abort();
    if let Some(f) = follower {
        f.abort();
    }
    stop_listening.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
