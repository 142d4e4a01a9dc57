//! `shadow-edgeproxy`: parse config, bind, run until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use shadow_edgeproxy::config::{Cli, EdgeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shadow_common::telemetry::init("info", "shadow-edgeproxy");
    let mut cli = Cli::parse();
    cli.api_token = std::env::var("SHADOW_API_TOKEN").ok();
    cli.do_token = std::env::var("SHADOW_DO_TOKEN").ok();
    let config: EdgeConfig = shadow_common::config::load(cli.config.as_deref(), &cli)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another edge running there?",
                config.listen
            )
        })?;
    shadow_edgeproxy::run(config, listener, shadow_common::shutdown_signal()).await?;
    Ok(())
}
