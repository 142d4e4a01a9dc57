//! Docker's own record of a task's containers, for asserting "never two at once" from outside
//! Shadow: `docker events` between two instants, turned into each container's running span.

use std::{collections::BTreeMap, process::Command};

/// When a container ran, in Unix nanoseconds, and which node made it.
#[derive(Debug, Clone)]
pub struct Span {
    pub container: String,
    pub node: String,
    pub started: u128,
    /// `None`: still running at the end of the window.
    pub died: Option<u128>,
}

/// Nanoseconds since the Unix epoch, on the same clock Docker stamps its events with.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// The running spans of `task`'s containers from `since_ns` until now, in order of start.
pub fn spans(task: &str, since_ns: u128) -> Vec<Span> {
    let since = format!(
        "{}.{:09}",
        since_ns / 1_000_000_000,
        since_ns % 1_000_000_000
    );
    let until_ns = now_ns();
    let until = format!(
        "{}.{:09}",
        until_ns / 1_000_000_000,
        until_ns % 1_000_000_000
    );
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=container",
            "--filter",
            &format!("label=shadow.task={task}"),
            "--format",
            "{{json .}}",
        ])
        .output()
        .expect("docker events runs");
    assert!(
        out.status.success(),
        "docker events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_id: BTreeMap<String, Span> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ev: serde_json::Value = serde_json::from_str(line).expect("an event is JSON");
        let id = ev["id"].as_str().unwrap_or_default().to_string();
        let at = ev["timeNano"].as_u64().map(u128::from).unwrap_or_default();
        let attrs = &ev["Actor"]["Attributes"];
        match ev["Action"].as_str().unwrap_or_default() {
            "start" => {
                by_id.insert(
                    id.clone(),
                    Span {
                        container: attrs["name"].as_str().unwrap_or_default().to_string(),
                        node: attrs["shadow.node"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        started: at,
                        died: None,
                    },
                );
            }
            "die" => {
                if let Some(s) = by_id.get_mut(&id) {
                    s.died.get_or_insert(at);
                }
            }
            _ => {}
        }
    }
    let mut spans: Vec<Span> = by_id.into_values().collect();
    spans.sort_by_key(|s| s.started);
    spans
}

/// Fails if two of the spans overlap: two containers of one task running at once.
pub fn assert_one_at_a_time(spans: &[Span]) {
    for pair in spans.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let a_end = a.died.unwrap_or(u128::MAX);
        assert!(
            a_end <= b.started,
            "two containers of one task ran at once: {} (node {}) until {:?}, and {} (node {}) from {}; all: {spans:#?}",
            a.container,
            a.node,
            a.died,
            b.container,
            b.node,
            b.started
        );
    }
}
