//! Task rules: server-made ids, domains unique across tasks, validation before any change.

use shadow_common::{
    task::{Task, TaskSpec},
    watch::WatchEvent,
};

use super::{Inner, Registry, RegistryError};

impl Registry {
    pub fn create_task(&self, mut spec: TaskSpec) -> Result<Task, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        spec.normalize();
        spec.keep_secrets(None).map_err(RegistryError::Invalid)?;
        let mut g = self.lock();
        check_domains_free(&g, &spec, None)?;
        let task = Task {
            id: uuid::Uuid::new_v4().simple().to_string(),
            spec,
        };
        g.store.put_task(&task)?;
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
        Ok(task)
    }

    pub fn update_task(&self, id: &str, mut spec: TaskSpec) -> Result<Task, RegistryError> {
        spec.validate().map_err(RegistryError::Invalid)?;
        spec.normalize();
        let mut g = self.lock();
        let old = g.tasks.get(id).cloned().ok_or_else(|| not_found(id))?;
        spec.keep_secrets(Some(&old.spec))
            .map_err(RegistryError::Invalid)?;
        check_domains_free(&g, &spec, Some(id))?;
        let (from, to) = (old.spec.volume.kind, spec.volume.kind);
        if from != to && from.is_stateful() {
            // The data lives in the old backend; the new one would start the app empty.
            let name = |k| format!("{k:?}").to_ascii_lowercase();
            return Err(RegistryError::Conflict {
                message: format!(
                    "volume.kind cannot change from {} to {}: the app's data is in its {} volume and would be left behind; keep volume.kind, or make a new task and copy the data over (Shadow does not migrate volumes yet)",
                    name(from),
                    name(to),
                    name(from)
                ),
                field: Some("volume.kind".into()),
            });
        }
        let task = Task {
            id: id.to_string(),
            spec,
        };
        g.store.put_task(&task)?;
        for d in &old.spec.domains {
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
        Ok(task)
    }

    pub fn delete_task(&self, id: &str) -> Result<(), RegistryError> {
        let mut g = self.lock();
        let old = g.tasks.get(id).cloned().ok_or_else(|| not_found(id))?;
        g.store.delete_task(id)?;
        for d in &old.spec.domains {
            g.domains.remove(d);
        }
        g.tasks.remove(id);
        g.emit(
            &self.revision_tx,
            WatchEvent::TaskDeleted { id: id.to_string() },
        );
        Ok(())
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
