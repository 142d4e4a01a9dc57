//! Shadow's edge proxy: the public entry. Routes each request by Host to the node that holds
//! (or will hold) its task, sticky; checks the nodes' health; retries a request whose connection
//! failed before anything was sent; follows a node that says the app runs elsewhere.
//!
//! # Layout
//! - [`config`]: flags, environment and file.
//! - [`handler`]: the request path; [`placement`]: lease holder, sticky choice, rendezvous hashing.
//! - [`provider`] / [`replacer`]: replacing dead nodes (static, AWS, DigitalOcean), one edge at a time.
//! - [`health`]: active and passive node health; [`metrics`]; [`tls`]: certificates by SNI.
//! - [`acme`]: automatic certificates, ordered by one edge at a time, served by all.
#![forbid(unsafe_code)]

pub mod acme;
pub mod config;
pub mod handler;
pub mod health;
pub mod metrics;
pub mod placement;
pub mod provider;
pub mod replacer;
pub mod tls;

use std::{future::Future, sync::Arc};

use http::uri::Scheme;
use shadow_common::{client::MasterClient, follower::Follower, proxy};
use tokio::net::TcpListener;

pub use config::EdgeConfig;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("node provider: {0}")]
    ProviderConfig(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Provider(#[from] provider::ProviderError),
    #[error("cannot start the worker threads: {0}; lower --workers (SHADOW_WORKERS)")]
    Workers(std::io::Error),
    #[error("cannot listen on {addr} ({what}): {source}; is another edge running there?")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The sockets an edge serves: public HTTP, public HTTPS (optional), and the admin listener for
/// its own health and metrics.
pub struct Listeners {
    pub http: TcpListener,
    pub https: Option<TcpListener>,
    pub admin: TcpListener,
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// Serves HTTP on `listener` (and HTTPS on `tls_listen` when configured, and the admin listener
/// on `admin_listen`) until `shutdown`.
pub async fn run(
    config: EdgeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let https = match config.tls_listen {
        Some(addr) => Some(bind("HTTPS", addr).await?),
        None => None,
    };
    let admin = bind("admin", config.admin_listen).await?;
    let listeners = Listeners {
        http: listener,
        https,
        admin,
    };
    run_listeners(config, listeners, shutdown).await
}

/// Like [`run`], with every listener given (tests bind port 0).
pub async fn run_listeners(
    config: EdgeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Listeners {
        http: listener,
        https: tls_listener,
        admin,
    } = listeners;
    let bound = listener.local_addr().map_err(RunError::Listener)?;
    let master = MasterClient::new(config.master.clone(), config.api_token.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let follower = Follower::spawn(master.clone(), stopped());
    let acme_config = config.acme().map_err(RunError::Config)?;
    let (acceptor, reloader) = match &tls_listener {
        Some(_) => {
            let acme = acme_config.as_ref().map(|_| follower.clone());
            let (acceptor, certificates) = tls::acceptor(&config.tls_cert, &config.tls_key, acme)?;
            let every = std::time::Duration::from_secs(config.tls_reload_s.max(1));
            let reloader = certificates.map(|c| tokio::spawn(c.reload_forever(every)));
            (Some(acceptor), reloader)
        }
        None => (None, None),
    };
    let health = health::Health::new(config.health_fails, config.health_passes);
    let checker = tokio::spawn(health::check_forever(
        health.clone(),
        follower.clone(),
        config.health_interval(),
    ));
    let provider = provider::build(&config.provider().map_err(RunError::ProviderConfig)?).await?;
    let replacer = replacer::Replacer::new(
        provider,
        master.clone(),
        follower.clone(),
        config.edge_id.clone(),
        config.replacer(),
    );
    let metrics = metrics::Metrics::new();
    if let Err(e) = metrics.registry.register(Box::new(replacer.metrics())) {
        tracing::error!(error = %e, "cannot register the replacement metric");
    }
    let replacing = replacer.spawn(stopped());
    let ordering = acme_config.map(|acme_config| {
        let orders = acme::metric();
        if let Err(e) = metrics.registry.register(Box::new(orders.clone())) {
            tracing::error!(error = %e, "cannot register the ACME metric");
        }
        tracing::info!(directory = %acme_config.directory, challenge = ?acme_config.challenge, "automatic certificates on");
        let acme = Arc::new(acme::Acme {
            config: acme_config,
            master: master.clone(),
            follower: follower.clone(),
            edge_id: config.edge_id.clone(),
            orders,
        });
        tokio::spawn(acme.run(stopped()))
    });
    let limits = config.client_limits();
    let https_port = tls_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let trusted_proxies = config.trusted_proxies().map_err(RunError::Config)?;
    let edge = Arc::new(handler::Edge {
        limits: limits.clone(),
        https_port,
        trusted_proxies,
        body_stall: proxy::BodyStall {
            limit: config.client_body_stall(),
            stalls: Arc::default(),
        },
        edge_id: config.edge_id.clone(),
        follower,
        health,
        sticky: placement::Sticky::default(),
        forwarder: proxy::Forwarder::default(),
        metrics,
    });
    let forgetter = tokio::spawn(forget_deleted(edge.clone()));
    let workers =
        Arc::new(proxy::Workers::start(config.workers, "shadow-edge").map_err(RunError::Workers)?);
    tracing::info!(%bound, edge = %config.edge_id, master = %config.master, workers = workers.len(), "edge proxy listening");
    let https = match (tls_listener, acceptor) {
        (Some(l), Some(acceptor)) => {
            tracing::info!(addr = ?l.local_addr().ok(), certificates = config.tls_cert.len(), "edge proxy listening for HTTPS");
            let edge = edge.clone();
            let options = proxy::ServeOptions {
                tls: Some(acceptor),
                workers: Some(workers.clone()),
                drain: None,
                limits: Some(limits.clone()),
                http2: true,
                hyper_only: false,
            };
            Some(tokio::spawn(proxy::serve_with(
                l,
                move |req, peer| handler::handle(edge.clone(), req, peer, Scheme::HTTPS),
                stopped(),
                options,
            )))
        }
        _ => None,
    };
    tracing::info!(addr = ?admin.local_addr().ok(), "edge admin listener (health, metrics)");
    let admin_edge = edge.clone();
    let admin = tokio::spawn(proxy::serve_with(
        admin,
        move |req, _peer| {
            let edge = admin_edge.clone();
            async move { handler::admin(&edge, &req) }
        },
        stopped(),
        proxy::ServeOptions::default(),
    ));
    let options = proxy::ServeOptions {
        workers: Some(workers),
        limits: Some(limits),
        http2: true,
        ..proxy::ServeOptions::default()
    };
    let http = proxy::serve_with(
        listener,
        move |req, peer| handler::handle(edge.clone(), req, peer, Scheme::HTTP),
        stopped(),
        options,
    );
    tokio::pin!(http);
    tokio::select! {
        () = &mut http => {}
        () = shutdown => {
            let _ = stop_tx.send(true);
            http.await;
        }
    }
    let _ = stop_tx.send(true);
    if let Some(h) = https {
        let _ = h.await;
    }
    let _ = admin.await;
    checker.abort();
    forgetter.abort();
    if let Some(r) = reloader {
        r.abort();
    }
    let _ = replacing.await;
    if let Some(o) = ordering {
        let _ = o.await;
    }
    Ok(())
}

/// Drops what the edge keeps per task (sticky choices, request series) when the task is
/// deleted, so those maps do not grow with every task ever served.
async fn forget_deleted(edge: Arc<handler::Edge>) {
    let mut changes = edge.follower.changes();
    while changes.changed().await.is_ok() {
        if !edge.follower.is_synced() {
            continue;
        }
        let state = edge.follower.read();
        edge.sticky.retain(|t| state.task(t).is_some());
        edge.metrics.retain_tasks(|t| state.task(t).is_some());
    }
}
