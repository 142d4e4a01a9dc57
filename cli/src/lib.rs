//! `shadow`, the command line for the people who host apps on Shadow: apps (list, show, create,
//! update, set, delete, logs, restart, wake, sleep), nodes and an overview, as tables for people or `--json`
//! for scripts. It only talks to the master's API.
//!
//! # Layout
//! - [`connection`]: which master, which token (flags, environment, config file contexts).
//! - [`spec`]: app specs from TOML or JSON files, `KEY=VALUE` changes.
//! - [`progress`]: `wake` and `sleep`, following the app's status until it is done.
//! - [`usage`]: `shadow usage`, what apps used.
//! - this file: the commands and their output.
#![forbid(unsafe_code)]

pub mod connection;
pub mod progress;
pub mod spec;
pub mod usage;

use std::{io::Write, path::PathBuf};

use clap::{Parser, Subcommand};
use shadow_common::{
    client::{ClientError, MasterClient},
    logs::LogLine,
    task::Task,
};

/// What went wrong, and the exit code it gives.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command or its input is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The master refused or failed the request (exit 1).
    #[error("{0}")]
    Api(String),
    /// The master cannot be reached or refuses the token (exit 3).
    #[error("{0}")]
    Connection(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Connection(_) => 3,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Transport { .. } | ClientError::Unauthorized => {
                CliError::Connection(e.to_string())
            }
            e => CliError::Api(e.to_string()),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "shadow",
    version,
    about = "Run and watch your apps on Shadow",
    after_help = "Connection: --master/--token, else SHADOW_MASTER_URL/SHADOW_API_TOKEN, else the current context of ~/.config/shadow/config.toml.\nExit codes: 0 done, 1 the master refused or failed, 2 wrong usage or input, 3 master unreachable or token refused."
)]
pub struct Cli {
    /// The master's URL.
    #[arg(long, global = true)]
    pub master: Option<String>,
    /// The API token.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// A context of the config file.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Your apps.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// The nodes that run apps.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Every app's state and every node's health at a glance.
    Status,
    /// What apps used: per app, or per hour for one app.
    Usage {
        /// One app (by name or id); all apps when left out.
        app: Option<String>,
        /// From when: a span back from now (30m, 24h, 7d) or a time (2026-11-27, 2026-11-27T08:00:00Z).
        #[arg(long, default_value = "24h")]
        since: String,
    },
    /// Prints a completion script: `shadow completions bash > /etc/bash_completion.d/shadow`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Every app with its state.
    List,
    /// One app: its spec and its state on each node.
    Show { app: String },
    /// Registers an app from a spec file (.toml or .json).
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Replaces an app's spec with a file's.
    Update {
        app: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Let volume.kind change, moving the data at the next start.
        #[arg(long)]
        migrate: bool,
    },
    /// Changes fields: KEY=VALUE, dotted for nested ones (env.LOG_LEVEL=debug; null removes).
    Set {
        app: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Removes an app.
    Delete { app: String },
    /// The app's output.
    Logs {
        app: String,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the last lines first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Restarts the app, ending a back-off after failed starts.
    Restart { app: String },
    /// Starts the app now, showing the start's progress until it answers.
    Wake { app: String },
    /// Stops the app now (its data is saved), until its next request.
    Sleep { app: String },
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Every node with its health and load.
    List,
}

/// Runs `cli`, writing what it shows to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "shadow",
            &mut script,
        );
        return out
            .write_all(&script)
            .map_err(|e| CliError::Usage(format!("cannot write the script: {e}")));
    }
    let (master, token) = connection::resolve(cli.master, cli.token, cli.context.as_deref())?;
    let client = MasterClient::new(master, token);
    let json = cli.json;
    match cli.command {
        Command::Apps(c) => apps(&client, c, json, out).await,
        Command::Nodes(NodesCommand::List) => nodes(&client, json, out).await,
        Command::Status => status(&client, json, out).await,
        Command::Usage { app, since } => {
            usage::show(&client, app.as_deref(), &since, json, out).await
        }
        Command::Completions { .. } => Ok(()),
    }
}

pub(crate) fn write(out: &mut (dyn Write + Send), text: &str) -> Result<(), CliError> {
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Usage(format!("cannot write the output: {e}")))
}

pub(crate) fn json_text(v: &impl serde::Serialize) -> String {
    let mut t = serde_json::to_string_pretty(v).unwrap_or_default();
    t.push('\n');
    t
}

/// Columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut t = line(header.to_vec());
    for row in rows {
        t.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    t
}

/// The app named `app`, by name or id.
pub(crate) async fn find(client: &MasterClient, app: &str) -> Result<Task, CliError> {
    let tasks = client.list_tasks().await?;
    if let Some(t) = tasks.iter().find(|t| t.id == app) {
        return Ok(t.clone());
    }
    let named: Vec<&Task> = tasks.iter().filter(|t| t.spec.name == app).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::Api(format!(
            "no app named {app:?}; `shadow apps list` shows them"
        ))),
        many => Err(CliError::Usage(format!(
            "{} apps are named {app:?}; name one by its id: {}",
            many.len(),
            many.iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn apps(
    client: &MasterClient,
    command: AppsCommand,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        AppsCommand::List => {
            let tasks = client.list_tasks().await?;
            let mut rows = Vec::new();
            let mut listed = Vec::new();
            for t in tasks {
                let status = client.task_status(&t.id).await?;
                let state = serde_json::to_value(status.state).unwrap_or_default();
                let state = state.as_str().unwrap_or("?").to_owned();
                rows.push(vec![
                    t.spec.name.clone(),
                    state.clone(),
                    t.spec.domains.join(","),
                    t.spec.image.clone(),
                    t.id.clone(),
                ]);
                listed.push(serde_json::json!({"id": t.id, "name": t.spec.name, "state": state, "domains": t.spec.domains, "image": t.spec.image}));
            }
            if json {
                write(out, &json_text(&listed))
            } else {
                write(
                    out,
                    &table(&["NAME", "STATE", "DOMAINS", "IMAGE", "ID"], &rows),
                )
            }
        }
        AppsCommand::Show { app } => {
            let task = find(client, &app).await?;
            let status = client.task_status(&task.id).await?;
            if json {
                return write(
                    out,
                    &json_text(&serde_json::json!({"task": task, "status": status})),
                );
            }
            let state = serde_json::to_value(status.state).unwrap_or_default();
            let mut text = format!(
                "{}  ({})\nstate:   {}\ndomains: {}\nimage:   {}\nvolume:  {:?}\n",
                task.spec.name,
                task.id,
                state.as_str().unwrap_or("?"),
                task.spec.domains.join(", "),
                task.spec.image,
                task.spec.volume.kind,
            );
            for n in &status.nodes {
                let st = serde_json::to_value(n.state).unwrap_or_default();
                text.push_str(&format!(
                    "on {}: {}{}, {} cold starts\n",
                    n.node,
                    st.as_str().unwrap_or("?"),
                    n.phase
                        .map(|p| format!(
                            " ({})",
                            serde_json::to_value(p)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default()
                        ))
                        .unwrap_or_default(),
                    n.cold_starts
                ));
                if let Some(e) = &n.last_error {
                    text.push_str(&format!("  last error: {}\n", e.message));
                    for l in &e.logs {
                        text.push_str(&format!("  | {l}\n"));
                    }
                }
            }
            write(out, &text)
        }
        AppsCommand::Create { file } => {
            let spec = spec::read(&file)?;
            let task = client.create_task(&spec).await?;
            done(out, json, &task, "created")
        }
        AppsCommand::Update { app, file, migrate } => {
            let task = find(client, &app).await?;
            let spec = spec::read(&file)?;
            let updated = if migrate {
                client.update_task_migrating(&task.id, &spec).await?
            } else {
                client.update_task(&task.id, &spec).await?
            };
            done(out, json, &updated, "updated")
        }
        AppsCommand::Set { app, pairs } => {
            let task = find(client, &app).await?;
            let patch = spec::patch(&pairs)?;
            let updated = client.patch_task(&task.id, &patch).await?;
            done(out, json, &updated, "updated")
        }
        AppsCommand::Delete { app } => {
            let task = find(client, &app).await?;
            client.delete_task(&task.id).await?;
            done(out, json, &task, "deleted")
        }
        AppsCommand::Restart { app } => {
            let task = find(client, &app).await?;
            let restarted = client.restart_task(&task.id).await?;
            done(out, json, &restarted, "restarting")
        }
        AppsCommand::Wake { app } => {
            let task = find(client, &app).await?;
            progress::wake(client, &task, json, out).await
        }
        AppsCommand::Sleep { app } => {
            let task = find(client, &app).await?;
            progress::sleep(client, &task, json, out).await
        }
        AppsCommand::Logs { app, follow, tail } => {
            let task = find(client, &app).await?;
            logs(client, &task.id, tail, follow, json, out).await
        }
    }
}

fn done(out: &mut (dyn Write + Send), json: bool, task: &Task, what: &str) -> Result<(), CliError> {
    if json {
        write(out, &json_text(task))
    } else {
        write(out, &format!("{what} {} ({})\n", task.spec.name, task.id))
    }
}

async fn logs(
    client: &MasterClient,
    id: &str,
    tail: usize,
    follow: bool,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let mut resp = client.task_logs(id, tail, follow).await?;
    let mut buf = String::new();
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| CliError::Connection(format!("the log stream broke: {e}")))?;
        let Some(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            if json {
                write(out, &line)?;
                continue;
            }
            if let Ok(l) = serde_json::from_str::<LogLine>(line.trim()) {
                let run = l.run.rsplit('-').next().unwrap_or(&l.run);
                write(out, &format!("{} [{run}] {}\n", l.ts, l.line))?;
            }
        }
        out.flush().ok();
    }
    Ok(())
}

async fn nodes(
    client: &MasterClient,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let nodes = client.list_nodes().await?;
    if json {
        return write(out, &json_text(&nodes));
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                if n.healthy { "healthy" } else { "unhealthy" }.into(),
                n.address.clone(),
                format!("{}/{}", n.running.len(), n.capacity),
                format!("{:.2}", n.load),
            ]
        })
        .collect();
    write(
        out,
        &table(&["NODE", "HEALTH", "ADDRESS", "APPS", "LOAD"], &rows),
    )
}

async fn status(
    client: &MasterClient,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let tasks = client.list_tasks().await?;
    let nodes = client.list_nodes().await?;
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for t in &tasks {
        let s = client.task_status(&t.id).await?;
        let word = serde_json::to_value(s.state).unwrap_or_default();
        *states
            .entry(word.as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let healthy = nodes.iter().filter(|n| n.healthy).count();
    if json {
        return write(
            out,
            &json_text(
                &serde_json::json!({"apps": tasks.len(), "states": states, "nodes": nodes.len(), "healthy_nodes": healthy}),
            ),
        );
    }
    let by_state = states
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    write(
        out,
        &format!(
            "apps:  {} ({})\nnodes: {} ({healthy} healthy)\n",
            tasks.len(),
            if by_state.is_empty() {
                "none".into()
            } else {
                by_state
            },
            nodes.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn completions_are_generated_for_every_subcommand() {
        let cli = Cli::parse_from(["shadow", "completions", "bash"]);
        let mut out = Vec::new();
        run(cli, &mut out).await.expect("script");
        let script = String::from_utf8(out).expect("text");
        for word in ["apps", "nodes", "status", "logs", "restart"] {
            assert!(script.contains(word), "{word} missing");
        }
    }
}
