//! What a node reports about each app it has, and what the master answers about a task: the
//! wire types of `PUT /nodes/{node}/apps/{task}` and `GET /tasks/{id}/status`.

use serde::{Deserialize, Serialize};

/// Where an app is in its life on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// No container; the next request starts one.
    Idle,
    Starting,
    Running,
    /// Paused after its idle timeout, memory and lease kept: the next request thaws it in
    /// milliseconds.
    Frozen,
    Stopping,
    /// The last start failed; the next request tries again.
    Failed,
    /// The last starts failed; requests get 503 until `backoff_until_ms`.
    Backoff,
}

impl AppState {
    /// How telling a state is when a task is on several nodes: the summary shows the highest.
    fn rank(self) -> u8 {
        match self {
            AppState::Idle => 0,
            AppState::Stopping => 1,
            AppState::Failed => 2,
            AppState::Backoff => 3,
            AppState::Frozen => 4,
            AppState::Starting => 5,
            AppState::Running => 6,
        }
    }
}

/// The step a start is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPhase {
    /// Taking the task's volume lease (waiting for another node's to lapse, perhaps).
    Lease,
    /// Attaching (restoring, mounting) the volume.
    Volume,
    /// Pulling the image, when the node does not have it.
    Image,
    /// Creating and starting the container.
    Container,
    /// Waiting for the app to answer its readiness probe.
    Ready,
}

impl StartPhase {
    /// The phase for people following a start (`shadow apps wake`, the dashboard).
    pub fn words(self) -> &'static str {
        match self {
            StartPhase::Lease => "taking the volume lease",
            StartPhase::Volume => "attaching the volume",
            StartPhase::Image => "pulling the image",
            StartPhase::Container => "starting the container",
            StartPhase::Ready => "waiting for the app to answer",
        }
    }
}

/// Why the last start failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastError {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub message: String,
    /// The container's last output lines, when it got that far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

/// The limits an app runs under: its task's, else the node's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectiveLimits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: i64,
}

/// One app on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppStatus {
    pub task_id: String,
    pub node: String,
    pub state: AppState,
    /// While `starting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StartPhase>,
    /// When it entered `state` (unix milliseconds).
    pub since_ms: u64,
    /// The image of the current or last run, and its digest (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<EffectiveLimits>,
    /// The last request this node served the app (unix milliseconds; reported every few seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request_ms: Option<u64>,
    /// Starts that succeeded on this node.
    pub cold_starts: u64,
    /// Starts that failed in a row.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
}

impl AppStatus {
    /// A task a node has just heard of: idle, never started.
    pub fn new(task_id: &str, node: &str) -> Self {
        Self {
            task_id: task_id.to_owned(),
            node: node.to_owned(),
            state: AppState::Idle,
            phase: None,
            since_ms: now_ms(),
            image: None,
            image_digest: None,
            limits: None,
            last_request_ms: None,
            cold_starts: 0,
            failures: 0,
            backoff_until_ms: None,
            last_error: None,
        }
    }
}

/// `GET /tasks/{id}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub name: String,
    /// One word for the whole task: the most telling of its nodes' states (`running` if it
    /// runs anywhere), `idle` when no node has it.
    pub state: AppState,
    /// Each node that has or had the app, most recent change first.
    pub nodes: Vec<AppStatus>,
}

/// The one-word state of a task from its nodes' reports.
pub fn summary<'a>(nodes: impl IntoIterator<Item = &'a AppStatus>) -> AppState {
    nodes
        .into_iter()
        .map(|s| s.state)
        .max_by_key(|s| s.rank())
        .unwrap_or(AppState::Idle)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(state: AppState) -> AppStatus {
        AppStatus {
            state,
            ..AppStatus::new("t", "n")
        }
    }

    #[test]
    fn the_summary_is_the_most_telling_state() {
        assert_eq!(summary([]), AppState::Idle);
        let s = [
            at(AppState::Idle),
            at(AppState::Backoff),
            at(AppState::Stopping),
        ];
        assert_eq!(summary(&s), AppState::Backoff);
        let s = [at(AppState::Failed), at(AppState::Running)];
        assert_eq!(summary(&s), AppState::Running);
    }
}
