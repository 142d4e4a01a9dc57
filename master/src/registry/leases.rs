//! Lease rules: one holder per task, a TTL, and a fencing token that only grows.
//!
//! Tokens come from one counter for all tasks, persisted with every grant, so a token is larger
//! than any granted before it, across tasks and across master restarts.

use shadow_common::{
    error::FieldError,
    lease::{Lease, LeaseGrant, LeaseRenewal, LeaseRequest, MAX_TTL_MS, MIN_TTL_MS},
    node::check_node_id,
    watch::WatchEvent,
};

use super::{Registry, RegistryError};

fn check_ttl(ttl_ms: u64) -> Result<(), RegistryError> {
    if (MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(RegistryError::Invalid(FieldError::new(
            "ttl_ms",
            format!("ttl_ms must be {MIN_TTL_MS} to {MAX_TTL_MS}"),
        )))
    }
}

impl Registry {
    /// Grants the task's lease to `req.node` unless another node holds a live one.
    /// The same node asking again gets a fresh, larger token (it may have lost the old one).
    pub fn acquire_lease(
        &self,
        task_id: &str,
        req: LeaseRequest,
    ) -> Result<LeaseGrant, RegistryError> {
        check_ttl(req.ttl_ms)?;
        let mut g = self.lock();
        // Names starting with '_' are cluster-wide locks (e.g. `_replace-nodes` for the edge
        // that may replace dead nodes): no task behind them, any well-formed holder id.
        let named_lock = task_id.starts_with('_');
        if named_lock {
            check_node_id(&req.node)
                .map_err(|e| RegistryError::Invalid(FieldError::new("node", e.message)))?;
        } else if !g.tasks.contains_key(task_id) {
            return Err(RegistryError::NotFound(format!(
                "no task with id {task_id:?}; a lease is only for an existing task (or a lock name starting with '_')"
            )));
        }
        if !named_lock && !g.nodes.contains_key(&req.node) {
            return Err(RegistryError::Invalid(FieldError::new(
                "node",
                format!(
                    "node {:?} is not registered; register it with POST /nodes/ first",
                    req.node
                ),
            )));
        }
        let now = self.clock.now_ms();
        if let Some(cur) = g.leases.get(task_id) {
            if cur.expires_at > now && cur.node != req.node {
                return Err(RegistryError::LeaseConflict {
                    message: format!(
                        "task {task_id} is leased to node {} for {} ms more; send its requests there",
                        cur.node,
                        cur.expires_at - now
                    ),
                    holder: Some(cur.node.clone()),
                });
            }
        }
        let lease = Lease {
            task_id: task_id.to_string(),
            node: req.node,
            token: g.next_token,
            expires_at: now + req.ttl_ms,
        };
        g.store.put_lease(&lease, lease.token + 1)?;
        g.next_token = lease.token + 1;
        g.leases.insert(task_id.to_string(), lease.clone());
        let grant = LeaseGrant {
            token: lease.token,
            expires_at: lease.expires_at,
        };
        g.emit(&self.revision_tx, WatchEvent::LeasePut { lease });
        Ok(grant)
    }

    /// Extends a live lease held with `req.token`; a lapsed or taken lease cannot be renewed.
    pub fn renew_lease(
        &self,
        task_id: &str,
        req: LeaseRenewal,
    ) -> Result<LeaseGrant, RegistryError> {
        check_ttl(req.ttl_ms)?;
        let mut g = self.lock();
        let now = self.clock.now_ms();
        let cur = match g.leases.get(task_id) {
            Some(cur) if cur.token == req.token && cur.expires_at > now => cur.clone(),
            Some(cur) => {
                return Err(RegistryError::LeaseConflict {
                    message: format!(
                        "lease token {} for task {task_id} lapsed or was superseded (current token {}, node {}); stop the task and acquire again",
                        req.token, cur.token, cur.node
                    ),
                    holder: (cur.expires_at > now).then(|| cur.node.clone()),
                })
            }
            None => {
                return Err(RegistryError::LeaseConflict {
                    message: format!(
                        "task {task_id} holds no lease (token {} lapsed or was released); stop the task and acquire again",
                        req.token
                    ),
                    holder: None,
                })
            }
        };
        let lease = Lease {
            expires_at: now + req.ttl_ms,
            ..cur
        };
        let next = g.next_token;
        g.store.put_lease(&lease, next)?;
        g.leases.insert(task_id.to_string(), lease.clone());
        let grant = LeaseGrant {
            token: lease.token,
            expires_at: lease.expires_at,
        };
        g.emit(&self.revision_tx, WatchEvent::LeasePut { lease });
        Ok(grant)
    }

    /// Releases the lease if `token` is the current one; releasing a lease that is gone is fine.
    pub fn release_lease(&self, task_id: &str, token: u64) -> Result<(), RegistryError> {
        let mut g = self.lock();
        match g.leases.get(task_id) {
            None => Ok(()),
            Some(cur) if cur.token != token => Err(RegistryError::LeaseConflict {
                message: format!(
                    "token {token} is not the current lease of task {task_id} (node {} holds token {}); nothing released",
                    cur.node, cur.token
                ),
                holder: Some(cur.node.clone()),
            }),
            Some(_) => {
                g.store.delete_lease(task_id)?;
                g.leases.remove(task_id);
                g.emit(
                    &self.revision_tx,
                    WatchEvent::LeaseReleased {
                        task_id: task_id.to_string(),
                        token,
                        expired: false,
                    },
                );
                Ok(())
            }
        }
    }

    pub fn list_leases(&self) -> Vec<Lease> {
        let now = self.clock.now_ms();
        self.lock()
            .leases
            .values()
            .filter(|l| l.expires_at > now)
            .cloned()
            .collect()
    }

    pub fn get_lease(&self, task_id: &str) -> Result<Lease, RegistryError> {
        let now = self.clock.now_ms();
        self.lock()
            .leases
            .get(task_id)
            .filter(|l| l.expires_at > now)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("task {task_id:?} holds no live lease")))
    }

    /// Drops lapsed leases and announces them; called by the ticker.
    pub(super) fn expire_leases(&self) {
        let now = self.clock.now_ms();
        let mut g = self.lock();
        let lapsed: Vec<_> = g
            .leases
            .values()
            .filter(|l| l.expires_at <= now)
            .cloned()
            .collect();
        for l in lapsed {
            if let Err(e) = g.store.delete_lease(&l.task_id) {
                tracing::error!(task = %l.task_id, error = %e, "cannot drop a lapsed lease; will retry");
                continue;
            }
            tracing::info!(task = %l.task_id, node = %l.node, token = l.token, "lease lapsed");
            g.leases.remove(&l.task_id);
            g.emit(
                &self.revision_tx,
                WatchEvent::LeaseReleased {
                    task_id: l.task_id,
                    token: l.token,
                    expired: true,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shadow_common::{
        lease::{LeaseRenewal, LeaseRequest},
        node::NodeRegistration,
        task::TaskSpec,
        watch::WatchEvent,
    };

    use crate::{
        registry::{Registry, RegistryError},
        store::sqlite::SqliteStore,
    };

    fn setup(dir: &std::path::Path) -> (Registry, String) {
        let store = SqliteStore::open(dir).expect("store");
        let reg = Registry::open(Box::new(store), Duration::from_secs(1)).expect("registry");
        for id in ["a", "b"] {
            reg.register_node(NodeRegistration {
                id: id.into(),
                address: "127.0.0.1:7071".into(),
                capacity: 1,
            })
            .expect("node");
        }
        let spec = TaskSpec::from_json(
            br#"{"name":"t","domains":["t.example.com"],"image":"x","volume":{"kind":"local"}}"#,
        )
        .expect("spec");
        let task = reg.create_task(spec).expect("task").id;
        (reg, task)
    }

    fn req(node: &str, ttl_ms: u64) -> LeaseRequest {
        LeaseRequest {
            node: node.into(),
            ttl_ms,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lapses_after_its_ttl_on_tokios_clock() {
        let dir = tempfile::tempdir().expect("tmp");
        let (reg, task) = setup(dir.path());
        let a = reg.acquire_lease(&task, req("a", 1_000)).expect("a");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(
            reg.acquire_lease(&task, req("b", 1_000)),
            Err(RegistryError::LeaseConflict { holder: Some(h), .. }) if h == "a"
        ));
        // Renewing just in time keeps it.
        reg.renew_lease(
            &task,
            LeaseRenewal {
                token: a.token,
                ttl_ms: 1_000,
            },
        )
        .expect("renew in time");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(reg.acquire_lease(&task, req("b", 1_000)).is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        let rev = reg.changes_since(None, 0).revision;
        reg.tick();
        let news = reg.changes_since(Some(&reg.epoch), rev);
        assert!(
            news.events.iter().any(|e| matches!(e, WatchEvent::LeaseReleased { expired: true, token, .. } if *token == a.token)),
            "the lapse is announced: {news:?}"
        );
        let b = reg
            .acquire_lease(&task, req("b", 1_000))
            .expect("b after the lapse");
        assert!(b.token > a.token);
        assert!(
            reg.renew_lease(
                &task,
                LeaseRenewal {
                    token: a.token,
                    ttl_ms: 1_000
                }
            )
            .is_err(),
            "the lapsed holder cannot renew"
        );
        assert!(
            reg.release_lease(&task, a.token).is_err(),
            "nor release b's lease"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_grow_across_tasks_and_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let (reg, task) = setup(dir.path());
        let mut last = 0;
        for _ in 0..5 {
            let g = reg.acquire_lease(&task, req("a", 100)).expect("grant");
            assert!(g.token > last);
            last = g.token;
        }
        drop(reg);
        let store = SqliteStore::open(dir.path()).expect("store");
        let reg = Registry::open(Box::new(store), Duration::from_secs(1)).expect("reopen");
        let g = reg.acquire_lease(&task, req("a", 100)).expect("grant");
        assert!(g.token > last, "{} after {last}", g.token);
    }
}
