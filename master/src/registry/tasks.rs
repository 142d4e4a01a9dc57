//! Task rules: server-made ids, domains unique across tasks, validation before any change.

use shadow_common::{
    error::FieldError,
    task::{Task, TaskSpec, VolumeKind},
    watch::WatchEvent,
};

use super::{Inner, Registry, RegistryError};

impl Registry {
    pub async fn create_task(&self, mut spec: TaskSpec) -> Result<Task, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        if spec.volume.migrating_from.is_some() {
            return Err(master_only());
        }
        if spec.restarts != 0 {
            return Err(restarts_master_only());
        }
        spec.normalize();
        spec.keep_secrets(None).map_err(RegistryError::Invalid)?;
        self.put_task(|g| {
            check_domains_free(g, &spec, None)?;
            check_kind_runnable(g, &spec)?;
            let task = Task {
                id: uuid::Uuid::new_v4().simple().to_string(),
                spec: spec.clone(),
            };
            Ok((task, vec![]))
        })
        .await
    }

    /// Replaces the task's spec. A change of a stateful `volume.kind` is refused unless
    /// `migrate`: then the task records where the data still is (`volume.migrating_from`) and
    /// its next start moves it.
    pub async fn update_task(
        &self,
        id: &str,
        mut spec: TaskSpec,
        migrate: bool,
    ) -> Result<Task, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        spec.normalize();
        self.put_task(|g| Self::updated_spec(g, id, spec.clone(), migrate))
            .await
    }

    /// The task `id` with `spec`, if the change is allowed, and its old domains.
    fn updated_spec(
        g: &mut Inner,
        id: &str,
        mut spec: TaskSpec,
        migrate: bool,
    ) -> Result<(Task, Vec<String>), RegistryError> {
        let g = &*g;
        let old = g.tasks.get(id).cloned().ok_or_else(|| not_found(id))?;
        spec.keep_secrets(Some(&old.spec))
            .map_err(RegistryError::Invalid)?;
        check_domains_free(g, &spec, Some(id))?;
        check_kind_runnable(g, &spec)?;
        let sent = spec.volume.migrating_from.take();
        let pending = old.spec.volume.migrating_from;
        let (from, to) = (old.spec.volume.kind, spec.volume.kind);
        let name = |k: VolumeKind| format!("{k:?}").to_ascii_lowercase();
        let conflict = |message: String| RegistryError::Conflict {
            message,
            field: Some("volume.kind".into()),
        };
        if from != to && from.is_stateful() {
            if let Some(p) = pending {
                return Err(conflict(format!(
                    "the data is still being moved from {} to {}; let the app start once (any request), then change volume.kind again",
                    name(p),
                    name(from)
                )));
            }
            if !migrate {
                // The data lives in the old backend; the new one would start the app empty.
                return Err(conflict(format!(
                    "volume.kind cannot change from {} to {} without moving the data: send the request again with ?migrate=true, and the app's next start copies its data into the new {} volume",
                    name(from),
                    name(to),
                    name(to)
                )));
            }
            if !to.is_stateful() {
                return Err(conflict(format!(
                    "volume.kind none would drop the app's {} data; to throw it away, delete the task and create it again",
                    name(from)
                )));
            }
            spec.volume.migrating_from = Some(from);
        } else {
            spec.volume.migrating_from = pending;
        }
        // A GET's body sent back carries the master's own value; any other is refused.
        if sent.is_some() && sent != pending {
            return Err(master_only());
        }
        if spec.restarts != 0 && spec.restarts != old.spec.restarts {
            return Err(restarts_master_only());
        }
        spec.restarts = old.spec.restarts;
        let task = Task {
            id: id.to_string(),
            spec,
        };
        Ok((task, old.spec.domains))
    }

    /// The node holding lease `token` moved the data into the new backend: the migration is
    /// done. Any other token is refused (409), so a stale node cannot end a newer migration.
    pub async fn task_migrated(&self, id: &str, token: u64) -> Result<Task, RegistryError> {
        self.put_task(|g| {
        let mut task = g.tasks.get(id).cloned().ok_or_else(|| not_found(id))?;
        let current = g.leases.get(id).map(|l| l.token);
        if current != Some(token) {
            return Err(RegistryError::Conflict {
                message: format!(
                    "lease token {token} is not the task's current one ({current:?}); only the node holding the lease finishes a migration"
                ),
                field: Some("token".into()),
            });
        }
        // Done already: storing it again changes nothing.
        task.spec.volume.migrating_from = None;
        let domains = task.spec.domains.clone();
        Ok((task, domains))
        })
        .await
    }

    /// Restarts the app wherever it runs and ends its back-off: the spec's `restarts` goes up
    /// by one, which nodes treat as any change of the spec.
    pub async fn restart_task(&self, id: &str) -> Result<Task, RegistryError> {
        self.put_task(|g| {
            let mut task = g.tasks.get(id).cloned().ok_or_else(|| not_found(id))?;
            task.spec.restarts += 1;
            let domains = task.spec.domains.clone();
            Ok((task, domains))
        })
        .await
    }

    /// Stores the task `decide` makes (with the domains it had), routes its domains, and
    /// announces it. Nothing changes when the store refuses.
    async fn put_task(
        &self,
        decide: impl FnMut(&mut Inner) -> Result<(Task, Vec<String>), RegistryError>,
    ) -> Result<Task, RegistryError> {
        self.change(
            decide,
            |s, (task, _)| s.put_task(task),
            |g, (task, old_domains)| {
                for d in &old_domains {
                    g.domains.remove(d);
                }
                for d in &task.spec.domains {
                    g.domains.insert(d.clone(), task.id.clone());
                }
                g.tasks.insert(task.id.clone(), task.clone());
                g.emit(
                    &self.revision_tx,
                    WatchEvent::TaskPut {
                        task: Box::new(task.clone()),
                    },
                );
                task
            },
        )
        .await
    }

    pub async fn delete_task(&self, id: &str) -> Result<(), RegistryError> {
        let id = id.to_owned();
        self.change(
            |g| g.tasks.get(&id).cloned().ok_or_else(|| not_found(&id)),
            {
                let id = id.clone();
                move |s, _| s.delete_task(&id)
            },
            |g, old| self.forget_task(g, &id, &old),
        )
        .await
    }

    pub(super) fn forget_task(&self, g: &mut Inner, id: &str, old: &Task) {
        g.statuses.remove(id);
        g.events.remove(id);
        for d in &old.spec.domains {
            g.domains.remove(d);
        }
        g.tasks.remove(id);
        g.emit(
            &self.revision_tx,
            WatchEvent::TaskDeleted { id: id.to_string() },
        );
    }

    pub fn get_task(&self, id: &str) -> Result<Task, RegistryError> {
        self.lock()
            .tasks
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    pub fn list_tasks(&self) -> Vec<Task> {
        self.lock().tasks.values().cloned().collect()
    }

    pub fn task_by_domain(&self, domain: &str) -> Result<Task, RegistryError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let g = self.lock();
        g.domains
            .get(&domain)
            .and_then(|id| g.tasks.get(id))
            .cloned()
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "no task serves domain {domain:?}; list tasks with GET /tasks/"
                ))
            })
    }
}

fn not_found(id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "no task with id {id:?}; list tasks with GET /tasks/"
    ))
}

fn check_domains_free(g: &Inner, spec: &TaskSpec, own: Option<&str>) -> Result<(), RegistryError> {
    for (i, d) in spec.domains.iter().enumerate() {
        if let Some(other) = g.domains.get(d) {
            if Some(other.as_str()) != own {
                let name = g.tasks.get(other).map_or("", |t| t.spec.name.as_str());
                return Err(RegistryError::Conflict {
                    message: format!(
                        "domain {d:?} belongs to task {other} ({name}); remove it there first"
                    ),
                    field: Some(format!("domains[{i}]")),
                });
            }
        }
    }
    Ok(())
}

/// A stateful kind must be one some registered node is configured for (nodes that do not say
/// count as able); with no node registered yet there is nothing to judge by.
fn check_kind_runnable(g: &Inner, spec: &TaskSpec) -> Result<(), RegistryError> {
    let kind = spec.volume.kind;
    if !kind.is_stateful() || g.nodes.is_empty() {
        return Ok(());
    }
    let able = g.nodes.values().any(|n| {
        n.reg
            .volume_kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&kind))
    });
    if able {
        return Ok(());
    }
    let name = format!("{kind:?}").to_ascii_lowercase();
    Err(RegistryError::Unrunnable(FieldError::new(
        "volume.kind",
        format!("no registered node is configured for {name} volumes, so no node could start this app; configure a node for them (see docs/operations.md) or use another volume.kind"),
    )))
}

fn restarts_master_only() -> RegistryError {
    RegistryError::Invalid(FieldError::new(
        "restarts",
        "restarts is counted by the master; leave it out (POST /tasks/{id}/restart restarts the app)",
    ))
}

fn master_only() -> RegistryError {
    RegistryError::Invalid(FieldError::new(
        "volume.migrating_from",
        "volume.migrating_from is set by the master during a migration; leave it out (change volume.kind with ?migrate=true instead)",
    ))
}
