//! `shadow-master`: parse config, bind, run until Ctrl-C or SIGTERM; `shadow-master export`
//! and `shadow-master import FILE` move the whole state in and out as JSON.

use anyhow::Context;
use clap::Parser;
use shadow_master::{
    config::{Cli, Command, MasterConfig},
    store::transfer,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // warp logs every client that hangs up mid-request (a long poll cut short) as an error.
    let _telemetry = shadow_common::telemetry::init("info,warp::server=off", "shadow-master");
    let mut cli = Cli::parse();
    cli.api_token = std::env::var("SHADOW_API_TOKEN").ok();
    let config: MasterConfig = shadow_common::config::load(cli.config.as_deref(), &cli)?;
    match &cli.command {
        Some(Command::Export { out }) => return export(&config, out.as_deref()),
        Some(Command::Import { file }) => return import(&config, file),
        None => {}
    }
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

fn export(config: &MasterConfig, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    // The stores block (and PostgreSQL's client runs its own runtime): off the async workers.
    let e = off_runtime(|| transfer::export(config))?;
    let mut text = serde_json::to_string_pretty(&e)?;
    text.push('\n');
    match out {
        None => {
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
        }
        Some(path) => {
            use std::{io::Write, os::unix::fs::OpenOptionsExt};
            // It holds the tasks' secrets: the owner only.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!("cannot create {} (it must not exist yet)", path.display())
                })?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
    }
    tracing::info!(
        tasks = e.state.tasks.len(),
        nodes = e.state.nodes.len(),
        leases = e.state.leases.len(),
        usage_rows = e.usage.len(),
        "exported"
    );
    Ok(())
}

fn import(config: &MasterConfig, file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let e = transfer::parse(&file.display().to_string(), &text)?;
    off_runtime(|| transfer::import(config, &e))?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        tasks = e.state.tasks.len(),
        "imported; start the master on this data dir"
    );
    Ok(())
}

/// Runs `f` on a plain thread: the stores block, and PostgreSQL's client runs a runtime of its
/// own, which must not start inside this one.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the store thread panicked"))
}
