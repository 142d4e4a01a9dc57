//! Apps' states as their nodes report them: kept in memory only (nodes send everything again
//! every minute, so a restarted master learns it back), dropped with their task or node.

use shadow_common::{
    error::FieldError,
    status::{summary, AppState, AppStatus, TaskStatus},
};

use super::{Inner, Registry, RegistryError};

/// A change of an app's state on a node, as the dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppEvent {
    pub at_ms: u64,
    pub node: String,
    pub state: AppState,
    /// The error, when the change is a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How many changes of state are kept per app.
const EVENTS_KEPT: usize = 20;

impl Registry {
    /// Stores what `node` reports about `task`. Masters sharing a store write a change of
    /// state through it, so every master shows it; the rest of a report (the last request's
    /// time) is stored without telling the others.
    pub async fn report_app(
        &self,
        node: &str,
        task: &str,
        status: AppStatus,
    ) -> Result<(), RegistryError> {
        if status.node != node || status.task_id != task {
            return Err(RegistryError::Invalid(FieldError::new(
                "body",
                format!(
                    "the body reports task {:?} on node {:?}; PUT it at /nodes/{}/apps/{}",
                    status.task_id, status.node, status.node, status.task_id
                ),
            )));
        }
        let known = |g: &Inner| -> Result<bool, RegistryError> {
            if !g.nodes.contains_key(node) {
                return Err(RegistryError::NotFound(format!(
                    "node {node:?} is not registered; register it with POST /nodes/ first"
                )));
            }
            if !g.tasks.contains_key(task) {
                return Err(RegistryError::NotFound(format!("no task with id {task:?}")));
            }
            let before = g.statuses.get(task).and_then(|m| m.get(node));
            Ok(before.is_none_or(|b| {
                (b.state, b.since_ms, b.phase, b.failures)
                    != (status.state, status.since_ms, status.phase, status.failures)
                    || b.last_error != status.last_error
            }))
        };
        let changed = known(&self.lock())?;
        if !self.shared {
            record(&mut self.lock(), status);
            return Ok(());
        }
        if !changed {
            let quiet = status.clone();
            self.store
                .run(move |s| s.put_app_status(&quiet, false))
                .await?;
            record(&mut self.lock(), status);
            return Ok(());
        }
        self.change(
            |g| known(g).map(|_| status.clone()),
            |s, st| s.put_app_status(st, true),
            record,
        )
        .await
    }

    /// The app's last changes of state, newest first.
    pub fn task_events(&self, task: &str) -> Vec<AppEvent> {
        let g = self.lock();
        g.events
            .get(task)
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The task's state on each node that reported it, most recent change first.
    pub fn task_status(&self, id: &str) -> Result<TaskStatus, RegistryError> {
        let g = self.lock();
        let task = g.tasks.get(id).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "no task with id {id:?}; list tasks with GET /tasks/"
            ))
        })?;
        let mut nodes: Vec<AppStatus> = g
            .statuses
            .get(id)
            .map(|m| {
                m.iter()
                    // A node that was removed reports nothing any more.
                    .filter(|(node, _)| g.nodes.contains_key(*node))
                    .map(|(_, s)| s.clone())
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort_by_key(|s| std::cmp::Reverse(s.since_ms));
        Ok(TaskStatus {
            task_id: id.to_owned(),
            name: task.spec.name.clone(),
            state: summary(&nodes),
            nodes,
        })
    }

    /// The address of the node whose output of `task` to show: the one holding its lease,
    /// else the one that reported the app most recently.
    pub fn log_source(&self, task: &str) -> Result<String, RegistryError> {
        let g = self.lock();
        if !g.tasks.contains_key(task) {
            return Err(RegistryError::NotFound(format!("no task with id {task:?}")));
        }
        let holder = g.leases.get(task).map(|l| l.node.clone());
        let reported = g.statuses.get(task).and_then(|m| {
            m.values()
                .filter(|s| g.nodes.contains_key(&s.node))
                .max_by_key(|s| s.since_ms)
                .map(|s| s.node.clone())
        });
        holder
            .or(reported)
            .and_then(|n| g.nodes.get(&n))
            .map(|n| n.reg.address.clone())
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "no node has run task {task} yet, so it has no output; send it a request first"
                ))
            })
    }

    /// The one-word state of every task, for the task list.
    pub fn task_state(&self, id: &str) -> AppState {
        let g = self.lock();
        g.statuses.get(id).map_or(AppState::Idle, |m| {
            summary(
                m.iter()
                    .filter(|(n, _)| g.nodes.contains_key(*n))
                    .map(|(_, s)| s),
            )
        })
    }

    /// Where to wake `task`, as `(node id, address)`: the healthy holder of its lease, else the
    /// healthy node that reported it last, else the node the edges' rendezvous ranks first.
    pub fn wake_target(&self, task: &str) -> Result<(String, String), RegistryError> {
        let g = self.lock();
        if !g.tasks.contains_key(task) {
            return Err(RegistryError::NotFound(format!(
                "no task with id {task:?}; list tasks with GET /tasks/"
            )));
        }
        let healthy = |id: &str| g.nodes.get(id).filter(|n| n.healthy);
        let holder = g.leases.get(task).and_then(|l| healthy(&l.node));
        let reported = || {
            g.statuses.get(task).and_then(|m| {
                m.values()
                    .filter(|s| healthy(&s.node).is_some())
                    .max_by_key(|s| s.since_ms)
                    .and_then(|s| healthy(&s.node))
            })
        };
        let ranked = || {
            let nodes: Vec<_> = g.nodes.values().filter(|n| n.healthy).collect();
            shadow_common::placement::rendezvous(
                task,
                nodes.iter().map(|n| {
                    (
                        n.reg.id.as_str(),
                        shadow_common::placement::weight(&n.status()),
                    )
                }),
            )
            .first()
            .and_then(|id| g.nodes.get(id))
        };
        holder
            .or_else(reported)
            .or_else(ranked)
            .map(|n| (n.reg.id.clone(), n.reg.address.clone()))
            .ok_or_else(|| {
                RegistryError::Unrunnable(FieldError::new(
                    "nodes",
                    "no healthy node can run the app now; check GET /nodes/ and the nodes' logs",
                ))
            })
    }

    /// The nodes where `task` runs, starts or is frozen, as `(node id, address)`, to put it to
    /// sleep.
    pub fn awake_on(&self, task: &str) -> Result<Vec<(String, String)>, RegistryError> {
        let g = self.lock();
        if !g.tasks.contains_key(task) {
            return Err(RegistryError::NotFound(format!(
                "no task with id {task:?}; list tasks with GET /tasks/"
            )));
        }
        Ok(g.statuses
            .get(task)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|s| {
                matches!(
                    s.state,
                    AppState::Running | AppState::Starting | AppState::Frozen
                )
            })
            .filter_map(|s| g.nodes.get(&s.node))
            .map(|n| (n.reg.id.clone(), n.reg.address.clone()))
            .collect())
    }
}

/// Keeps a report in memory and, when the app's state changed, in its list of changes.
pub(super) fn record(g: &mut Inner, status: AppStatus) {
    let (task, node) = (status.task_id.clone(), status.node.clone());
    let before = g
        .statuses
        .get(&task)
        .and_then(|m| m.get(&node))
        .map(|s| (s.state, s.since_ms));
    if before != Some((status.state, status.since_ms)) {
        let failed = matches!(status.state, AppState::Failed | AppState::Backoff);
        let events = g.events.entry(task.clone()).or_default();
        events.push_back(AppEvent {
            at_ms: status.since_ms,
            node: node.clone(),
            state: status.state,
            error: failed
                .then(|| status.last_error.as_ref().map(|e| e.message.clone()))
                .flatten(),
        });
        if events.len() > EVENTS_KEPT {
            events.pop_front();
        }
    }
    g.statuses.entry(task).or_default().insert(node, status);
}
