//! `shadow-nodeproxy`: parse config, bind, run until Ctrl-C or SIGTERM (then stop every app);
//! `shadow-nodeproxy cleanup` removes this node's containers after the process died;
//! `shadow-nodeproxy firewall` fences the apps from the host (run as root before the node).

use anyhow::Context;
use clap::Parser;
use shadow_nodeproxy::config::{Cli, Command, NodeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shadow_common::telemetry::init("info", "shadow-nodeproxy");
    let mut cli = Cli::parse();
    cli.api_token = std::env::var("SHADOW_API_TOKEN").ok();
    cli.s3_access_key = std::env::var("SHADOW_S3_ACCESS_KEY").ok();
    cli.s3_secret_key = std::env::var("SHADOW_S3_SECRET_KEY").ok();
    cli.do_token = std::env::var("SHADOW_DO_TOKEN").ok();
    let config: NodeConfig = shadow_common::config::load(cli.config.as_deref(), &cli)?;
    if cli.command == Some(Command::Cleanup) {
        let n = shadow_nodeproxy::clean_up(&config.node_id, config.docker_host.as_deref())
            .await
            .context("cannot remove this node's containers; is Docker running?")?;
        tracing::info!(node = %config.node_id, removed = n, "cleanup done");
        return Ok(());
    }
    if cli.command == Some(Command::Firewall) {
        let bridge =
            shadow_nodeproxy::fence_apps(&config.app_network, config.docker_host.as_deref())
                .await
                .context("cannot fence the apps from this machine")?;
        tracing::info!(network = %config.app_network, %bridge, "app firewall rules in place");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another node proxy running there?",
                config.listen
            )
        })?;
    shadow_nodeproxy::run(config, listener, shadow_common::shutdown_signal()).await?;
    Ok(())
}
