//! `shadow apps wake` and `shadow apps sleep`: ask the master, then follow the app's status
//! until it runs (or failed) or sleeps, printing each phase of a start as it comes.

use std::{io::Write, time::Duration};

use tokio::time::Instant;

use shadow_common::{
    client::MasterClient,
    status::{AppState, AppStatus, StartPhase},
    task::Task,
};

use crate::{json_text, write, CliError};

/// How often the status is asked for while following.
const POLL: Duration = Duration::from_millis(150);

async fn on_node(
    client: &MasterClient,
    task: &str,
    node: &str,
) -> Result<Option<AppStatus>, CliError> {
    let status = client.task_status(task).await?;
    Ok(status.nodes.into_iter().find(|s| s.node == node))
}

pub async fn wake(
    client: &MasterClient,
    task: &Task,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let began = Instant::now();
    let answer = client.wake_task(&task.id).await?;
    let node = answer["node"].as_str().unwrap_or_default().to_owned();
    // A state entered before the wake (an old failure, say) is not this start's outcome.
    let before = on_node(client, &task.id, &node).await?.map(|s| s.since_ms);
    if !json {
        write(out, &format!("waking {} on {node}\n", task.spec.name))?;
        out.flush().ok();
    }
    let deadline = began + Duration::from_secs(task.spec.start_timeout_s) + Duration::from_secs(15);
    let mut shown: Option<StartPhase> = None;
    loop {
        let status = on_node(client, &task.id, &node).await?;
        if let Some(s) = &status {
            let fresh = Some(s.since_ms) != before;
            match s.state {
                AppState::Running => {
                    if json {
                        return write(out, &json_text(s));
                    }
                    return write(
                        out,
                        &format!(
                            "{} is running on {node} ({:.1} s)\n",
                            task.spec.name,
                            began.elapsed().as_secs_f64()
                        ),
                    );
                }
                AppState::Starting => {
                    if let Some(p) = s.phase.filter(|p| Some(*p) != shown) {
                        shown = Some(p);
                        if !json {
                            write(out, &format!("  {}\n", p.words()))?;
                            out.flush().ok();
                        }
                    }
                }
                AppState::Failed | AppState::Backoff if fresh => {
                    let mut msg = format!(
                        "{} failed to start on {node}: {}",
                        task.spec.name,
                        s.last_error
                            .as_ref()
                            .map_or("no reason given", |e| e.message.as_str())
                    );
                    if let Some(e) = &s.last_error {
                        for l in e.logs.iter().rev().take(10).rev() {
                            msg.push_str(&format!("\n  | {l}"));
                        }
                    }
                    msg.push_str(&format!(
                        "\nfix the spec (`shadow apps set {}`), then `shadow apps restart {}`",
                        task.spec.name, task.spec.name
                    ));
                    return Err(CliError::Api(msg));
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(CliError::Api(format!(
                "{} did not come up within {} s; `shadow apps show {}` and `shadow apps logs {}` tell why",
                task.spec.name,
                deadline.duration_since(began).as_secs(),
                task.spec.name,
                task.spec.name
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long a stop may take (the app's grace, then the volume's write-back).
const SLEEP_LIMIT: Duration = Duration::from_secs(300);

pub async fn sleep(
    client: &MasterClient,
    task: &Task,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let began = Instant::now();
    let answer = client.sleep_task(&task.id).await?;
    let told: Vec<String> = answer["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if !json && !told.is_empty() {
        write(
            out,
            &format!("stopping {} on {}\n", task.spec.name, told.join(", ")),
        )?;
        out.flush().ok();
    }
    loop {
        let status = client.task_status(&task.id).await?;
        let awake = status.nodes.iter().any(|s| {
            told.contains(&s.node)
                && matches!(
                    s.state,
                    AppState::Running | AppState::Starting | AppState::Frozen | AppState::Stopping
                )
        });
        if !awake {
            if json {
                return write(out, &json_text(&status));
            }
            return write(
                out,
                &if told.is_empty() {
                    format!("{} was not running\n", task.spec.name)
                } else {
                    format!(
                        "{} is asleep ({:.1} s); its next request starts it\n",
                        task.spec.name,
                        began.elapsed().as_secs_f64()
                    )
                },
            );
        }
        if began.elapsed() >= SLEEP_LIMIT {
            return Err(CliError::Api(format!(
                "{} is still stopping after {} s; `shadow apps logs {}` shows what it does",
                task.spec.name,
                SLEEP_LIMIT.as_secs(),
                task.spec.name
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
