//! Shadow's node proxy: takes requests from edges, starts the task's container on the first
//! one, proxies everything (streams, upgrades), and stops the container when idle.
//!
//! # Layout
//! - [`config`]: flags, environment and file.
//! - [`handler`]: the HTTP entry; Host → task → running app → forward; [`control`]: the
//!   master's routes (logs, wake, sleep).
//! - [`lifecycle`]: each task's life cycle on this node (idle, starting, running, frozen,
//!   stopping): the state machine, the phases of a start, a freeze and a stop.
//! - [`budget`]: the memory the apps' limits may add up to; [`firewall`]: apps fenced from the
//!   host and the metadata service.
//! - [`lease`]: the node's lease session and each lease's deadline.
//! - [`runtime`]: the container seam (Docker via bollard); [`volume`]: the volume seam.
//! - [`register`]: registration and heartbeats; [`status`]: each app's state, reported to the
//!   master; [`logs`]: each app's output, kept after its container; [`usage`]: what each app
//!   used, hour by hour; [`metrics`], [`pages`].
#![forbid(unsafe_code)]

pub mod budget;
pub mod config;
pub mod control;
pub mod firewall;
pub mod handler;
pub mod lease;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod pages;
pub mod register;
pub mod runtime;
pub mod status;
pub mod usage;
pub mod volume;

use std::{future::Future, sync::Arc};

use shadow_common::{client::MasterClient, follower::Follower, node::NodeRegistration, proxy};
use tokio::net::TcpListener;

pub use config::NodeConfig;

use crate::{
    lifecycle::{AppContext, Apps},
    runtime::{ContainerRuntime, RuntimeError},
    volume::{local::LocalVolumes, s3::S3Volumes, VolumeBackend, Volumes},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("invalid node id: {0}")]
    NodeId(shadow_common::error::FieldError),
    #[error("cannot start the worker threads: {0}; lower --workers (SHADOW_WORKERS)")]
    Workers(std::io::Error),
    #[error("cannot set up a volume backend: {0}")]
    Volume(#[from] volume::VolumeError),
    #[error("invalid lease settings: {0}")]
    Lease(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
}

/// Runs the node with Docker until `shutdown` resolves, then stops every app.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let runtime = runtime::docker::DockerRuntime::connect(config.docker_host.as_deref())
        .await?
        .with_registry_auth(config.registry_auth_file.clone());
    run_with(config, listener, Arc::new(runtime), shutdown).await
}

/// Like [`run`], with the container runtime given (tests may wrap the real one).
pub async fn run_with(
    config: NodeConfig,
    listener: TcpListener,
    runtime: Arc<dyn ContainerRuntime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    shadow_common::node::check_node_id(&config.node_id).map_err(RunError::NodeId)?;
    let timing = config.lease_timing().map_err(RunError::Lease)?;
    let bound = listener.local_addr().map_err(RunError::Listener)?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    remove_leftovers(&*runtime, &config.node_id).await?;
    let firewall: firewall::Mode = config.app_firewall.parse().map_err(RunError::Config)?;
    let bridge = runtime.ensure_network(&config.app_network).await?;
    firewall::apply(firewall, &bridge).await?;

    let master = MasterClient::new(config.master.clone(), config.api_token.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let follower = Follower::spawn(master.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let volumes = volumes(&config).await?;
    let apps_volume_kinds = volumes.kinds();
    let metrics = metrics::Metrics::new();
    let config = Arc::new(config);
    let leases = lease::LeaseSession::new(Arc::new(master.clone()), config.node_id.clone(), timing);
    let renewer = tokio::spawn(leases.clone().run());
    let status = status::StatusBoard::new(config.node_id.clone());
    let logs = logs::LogStore::new(&config.data_dir, config.app_log_bytes);
    let reporter = tokio::spawn(status.clone().report_forever(master.clone()));
    let usage = usage::UsageMeter::new(config.node_id.clone(), runtime.clone());
    let usage_reporter = tokio::spawn(
        usage
            .clone()
            .report_forever(master.clone(), config.usage_report_interval()),
    );
    let sandboxes =
        lifecycle::sandbox::SandboxPool::start(runtime.clone(), &config, metrics.clone()).await;
    let budget = budget::MemoryBudget::new(config.memory_budget_mb());
    tracing::info!(memory_budget_mb = config.memory_budget_mb(), network = %config.app_network, "app limits");
    let apps = Apps::new(Arc::new(AppContext {
        budget,
        config: config.clone(),
        runtime,
        volumes,
        metrics: metrics.clone(),
        leases,
        follower: follower.clone(),
        fence_check: Arc::new(lease::MasterFence {
            master: master.clone(),
            ttl: config.lease_ttl(),
        }),
        master: master.clone(),
        status: status.clone(),
        logs: logs.clone(),
        usage: usage.clone(),
        sandboxes: sandboxes.clone(),
    }));
    let reg = NodeRegistration {
        id: config.node_id.clone(),
        address: advertise,
        capacity: config.capacity,
        volume_kinds: Some(apps_volume_kinds),
    };
    let master_for_usage = master.clone();
    let heartbeat = tokio::spawn(register::heartbeat_loop(
        master,
        reg,
        apps.clone(),
        config.heartbeat_interval(),
    ));
    let reconciler = tokio::spawn(apps.clone().follow(follower.clone()));
    let node = Arc::new(handler::Node {
        apps: apps.clone(),
        follower,
        forwarder: proxy::Forwarder::default(),
        metrics,
        logs: logs.clone(),
        api_token: config.api_token.clone(),
    });
    let workers =
        proxy::Workers::start(config.workers, "shadow-node").map_err(RunError::Workers)?;
    tracing::info!(%bound, node = %config.node_id, master = %config.master, workers = workers.len(), "node proxy listening");
    let options = proxy::ServeOptions {
        workers: Some(Arc::new(workers)),
        ..proxy::ServeOptions::default()
    };
    proxy::serve_with(
        listener,
        move |req, peer| handler::handle(node.clone(), req, peer),
        shutdown,
        options,
    )
    .await;
    tracing::info!("shutting down: stopping every app");
    apps.stop_all().await;
    sandboxes.close().await;
    usage_reporter.abort();
    // The last figures (the stops just now), sent once more before the process ends.
    let report = usage.report(&master_for_usage);
    if tokio::time::timeout(std::time::Duration::from_secs(5), report)
        .await
        .is_err()
    {
        tracing::warn!("the master did not take the last usage report");
    }
    renewer.abort();
    reporter.abort();
    heartbeat.abort();
    reconciler.abort();
    let _ = stop_tx.send(true);
    Ok(())
}

/// The volume backends this node's settings configure; `local` is always there.
async fn volumes(config: &NodeConfig) -> Result<Volumes, RunError> {
    let s3 = S3Volumes::from_config(config)
        .await?
        .map(|b| Arc::new(b) as Arc<dyn VolumeBackend>);
    if s3.is_some() {
        tracing::info!(bucket = ?config.s3_bucket, endpoint = ?config.s3_endpoint, "s3 volumes enabled");
    }
    let ebs = volume::ebs::EbsVolumes::from_config(config)
        .await?
        .map(|b| Arc::new(b) as Arc<dyn VolumeBackend>);
    let digitalocean = volume::digitalocean::DoVolumes::from_config(config)
        .await?
        .map(|b| Arc::new(b) as Arc<dyn VolumeBackend>);
    Ok(Volumes {
        local: Some(Arc::new(LocalVolumes::new(&config.data_dir))),
        s3,
        ebs,
        digitalocean,
    })
}

/// Removes every container this node made, without a grace: what `shadow-nodeproxy cleanup`
/// does after the process died (systemd's `ExecStopPost`), so no app outlives its node's lease
/// renewals. Containers without this node's label are never touched.
pub async fn clean_up(node_id: &str, docker_host: Option<&str>) -> Result<usize, RunError> {
    shadow_common::node::check_node_id(node_id).map_err(RunError::NodeId)?;
    let runtime = runtime::docker::DockerRuntime::connect(docker_host).await?;
    let found = runtime
        .list_labelled(lifecycle::start::LABEL_NODE, node_id)
        .await?;
    for c in &found {
        tracing::info!(container = %c.name, "removing a container of this node");
        runtime
            .stop_and_remove(&c.id, std::time::Duration::ZERO)
            .await?;
    }
    Ok(found.len())
}

/// Makes the app network and installs its firewall rules (`shadow-nodeproxy firewall`).
pub async fn fence_apps(app_network: &str, docker_host: Option<&str>) -> Result<String, RunError> {
    let runtime = runtime::docker::DockerRuntime::connect(docker_host).await?;
    let bridge = runtime.ensure_network(app_network).await?;
    firewall::fence(&bridge).await?;
    Ok(bridge)
}

/// A node starts clean: containers it made in an earlier life are removed (their data is in
/// their volume); containers without its label are never touched.
async fn remove_leftovers(runtime: &dyn ContainerRuntime, node_id: &str) -> Result<(), RunError> {
    for c in runtime
        .list_labelled(lifecycle::start::LABEL_NODE, node_id)
        .await?
    {
        tracing::info!(container = %c.name, "removing a container this node left behind");
        if let Err(e) = runtime
            .stop_and_remove(&c.id, std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(container = %c.name, error = %e, "cannot remove a leftover container");
        }
    }
    Ok(())
}
