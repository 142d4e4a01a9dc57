//! `shadow-master`: parse config, bind, run until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use shadow_master::config::{Cli, MasterConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // warp logs every client that hangs up mid-request (a long poll cut short) as an error.
    let _telemetry = shadow_common::telemetry::init("info,warp::server=off", "shadow-master");
    let mut cli = Cli::parse();
    cli.api_token = std::env::var("SHADOW_API_TOKEN").ok();
    let config: MasterConfig = shadow_common::config::load(cli.config.as_deref(), &cli)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another master running there?",
                config.listen
            )
        })?;
    shadow_master::run(config, listener, shadow_common::shutdown_signal()).await?;
    Ok(())
}
