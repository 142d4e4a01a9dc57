//! Lease rules: one holder per task, a TTL, and a fencing token that only grows.
//!
//! Tokens come from one counter for all tasks, persisted with every grant, so a token is larger
//! than any granted before it, across tasks and across master restarts.
//!
//! A lapsed lease stays refused to other nodes for a grace period after its expiry, so the old
//! holder has stopped its app before anyone else may start it; renewals change only the expiry
//! in memory (a restarted master re-arms every lease for a full TTL). `docs/leases.md` has the
//! arithmetic.

use std::collections::BTreeMap;

use shadow_common::{
    error::FieldError,
    lease::{
        Lease, LeaseGrant, LeaseRenewal, LeaseRequest, LostLease, RenewedLease, SessionRenewal,
        SessionRenewed, MAX_SESSION_LEASES, MAX_TTL_MS, MIN_TTL_MS,
    },
    node::check_node_id,
    watch::WatchEvent,
};

use super::{Registry, RegistryError};
use crate::store::StoreError;

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
    /// Grants the task's lease to `req.node` unless another node holds it, or held it until
    /// less than the grace period ago. The same node asking again gets a fresh, larger token (it
    /// may have lost the old one).
    pub async fn acquire_lease(
        &self,
        task_id: &str,
        req: LeaseRequest,
    ) -> Result<LeaseGrant, RegistryError> {
        check_ttl(req.ttl_ms)?;
        self.change(
            |g| {
                let lease = self.grantable(g, task_id, req.clone())?;
                Ok((lease, g.leases.get(task_id).cloned()))
            },
            |s, (lease, seen)| s.grant_lease(lease, lease.token + 1, seen.as_ref()),
            |g, (lease, _)| {
                g.next_token = lease.token + 1;
                g.leases.insert(lease.task_id.clone(), lease.clone());
                let grant = LeaseGrant {
                    token: lease.token,
                    expires_at: lease.expires_at,
                };
                tracing::info!(task = %lease.task_id, node = %lease.node, token = lease.token, "lease granted");
                g.emit(&self.revision_tx, WatchEvent::LeasePut { lease });
                grant
            },
        )
        .await
    }

    /// The lease `req` would be granted, or why not.
    fn grantable(
        &self,
        g: &mut super::Inner,
        task_id: &str,
        req: LeaseRequest,
    ) -> Result<Lease, RegistryError> {
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
            let free_at = cur.expires_at + self.lease_grace_ms;
            if cur.node != req.node && now < free_at {
                let message = if now < cur.expires_at {
                    format!(
                        "task {task_id} is leased to node {} for {} ms more; send its requests there",
                        cur.node,
                        cur.expires_at - now
                    )
                } else {
                    format!(
                        "node {}'s lease of task {task_id} lapsed; it is free in {} ms (a grace for the old holder's stop)",
                        cur.node,
                        free_at - now
                    )
                };
                return Err(RegistryError::LeaseConflict {
                    message,
                    holder: Some(cur.node.clone()),
                });
            }
        }
        Ok(Lease {
            task_id: task_id.to_string(),
            node: req.node,
            token: g.next_token,
            expires_at: now + req.ttl_ms,
            granted_at: now,
            ttl_ms: req.ttl_ms,
        })
    }

    /// Extends a live lease held with `req.token`; a lapsed or taken lease cannot be renewed.
    pub async fn renew_lease(
        &self,
        task_id: &str,
        req: LeaseRenewal,
    ) -> Result<LeaseGrant, RegistryError> {
        check_ttl(req.ttl_ms)?;
        let now = self.clock.now_ms();
        let renewed = if self.shared {
            self.renew_shared(None, vec![(task_id.to_owned(), req.token)], req.ttl_ms, now)
                .await?
                .pop()
                .unwrap_or_else(|| Err("no answer from the store".into()))
        } else {
            let mut g = self.lock();
            renew_one(&mut g.leases, task_id, req.token, None, req.ttl_ms, now)
        };
        renewed.map_err(|message| {
            let holder = self
                .lock()
                .leases
                .get(task_id)
                .filter(|l| l.expires_at > now)
                .map(|l| l.node.clone());
            RegistryError::LeaseConflict { message, holder }
        })
    }

    /// Renews every lease a node names, in one call: the node's session. On a store of its
    /// own, only the expiry in memory changes: nothing is written and no watch event is sent,
    /// since no follower acts on a later expiry (a lapse is announced when it happens). Masters
    /// sharing a store write the renewal there, in one transaction, for every master to see.
    pub async fn renew_session(
        &self,
        node: &str,
        req: SessionRenewal,
    ) -> Result<SessionRenewed, RegistryError> {
        check_ttl(req.ttl_ms)?;
        if req.leases.len() > MAX_SESSION_LEASES {
            return Err(RegistryError::Invalid(FieldError::new(
                "leases",
                format!("at most {MAX_SESSION_LEASES} leases per renewal; split the list"),
            )));
        }
        let now = self.clock.now_ms();
        let held: Vec<(String, u64)> = req
            .leases
            .iter()
            .map(|h| (h.task_id.clone(), h.token))
            .collect();
        let results = if self.shared {
            self.renew_shared(Some(node.to_owned()), held.clone(), req.ttl_ms, now)
                .await?
        } else {
            let mut g = self.lock();
            held.iter()
                .map(|(task, token)| {
                    renew_one(&mut g.leases, task, *token, Some(node), req.ttl_ms, now)
                })
                .collect()
        };
        let mut out = SessionRenewed::default();
        for ((task_id, token), result) in held.into_iter().zip(results) {
            match result {
                Ok(grant) => out.renewed.push(RenewedLease {
                    task_id,
                    token,
                    expires_at: grant.expires_at,
                }),
                Err(error) => out.lost.push(LostLease {
                    task_id,
                    token,
                    error,
                }),
            }
        }
        Ok(out)
    }

    /// Renews in the shared store, deciding on the leases as stored (another master may have
    /// renewed or granted them a moment ago), then updates memory's expiries.
    async fn renew_shared(
        &self,
        node: Option<String>,
        held: Vec<(String, u64)>,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Vec<Result<LeaseGrant, String>>, RegistryError> {
        let results = self
            .store
            .run(move |s| {
                let mut out = Vec::with_capacity(held.len());
                for (task, token) in &held {
                    let renewed =
                        s.renew_lease_if_live(task, *token, node.as_deref(), ttl_ms, now)?;
                    out.push(match renewed {
                        Some(expires_at) => Ok((
                            task.clone(),
                            LeaseGrant {
                                token: *token,
                                expires_at,
                            },
                        )),
                        // Not renewable: say why, from the lease as stored.
                        None => {
                            let mut stored = s.leases_of(std::slice::from_ref(task))?;
                            Err(renew_one(&mut stored, task, *token, node.as_deref(), ttl_ms, now)
                                .err()
                                .unwrap_or_else(|| {
                                    format!("lease token {token} for task {task} changed while it was renewed; stop the task and acquire again")
                                }))
                        }
                    });
                }
                Ok(out)
            })
            .await?;
        let mut g = self.lock();
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(|(task, grant)| {
                    if let Some(l) = g.leases.get_mut(&task).filter(|l| l.token == grant.token) {
                        l.expires_at = grant.expires_at;
                        l.ttl_ms = ttl_ms;
                    }
                    grant
                })
            })
            .collect())
    }

    /// Brings memory's lease expiries up to the stored ones: renewals through other masters
    /// are not in the change log. `only`: these tasks; `None`: every lease.
    pub(super) async fn refresh_leases(&self, only: Option<Vec<String>>) -> Result<(), StoreError> {
        let stored: Vec<_> = self
            .store
            .run(move |s| match only {
                Some(ids) => s.leases_of(&ids).map(|m| m.into_values().collect()),
                None => s.all_leases(),
            })
            .await?;
        let mut g = self.lock();
        for l in stored {
            if let Some(cur) = g.leases.get_mut(&l.task_id) {
                if cur.token == l.token && l.expires_at > cur.expires_at {
                    cur.expires_at = l.expires_at;
                    cur.ttl_ms = l.ttl_ms;
                }
            }
        }
        Ok(())
    }

    /// Releases the lease if `token` is the current one; releasing a lease that is gone is fine.
    pub async fn release_lease(&self, task_id: &str, token: u64) -> Result<(), RegistryError> {
        let task = task_id.to_owned();
        self.change(
            |g| match g.leases.get(task_id) {
                None => Ok(false),
                Some(cur) if cur.token != token => Err(RegistryError::LeaseConflict {
                    message: format!(
                        "token {token} is not the current lease of task {task_id} (node {} holds token {}); nothing released",
                        cur.node, cur.token
                    ),
                    holder: Some(cur.node.clone()),
                }),
                Some(_) => Ok(true),
            },
            move |s, held| if *held { s.delete_lease(&task) } else { Ok(()) },
            |g, held| {
                if held {
                    g.leases.remove(task_id);
                    g.emit(
                        &self.revision_tx,
                        WatchEvent::LeaseReleased {
                            task_id: task_id.to_string(),
                            token,
                            expired: false,
                        },
                    );
                }
            },
        )
        .await
    }

    /// Every lease not yet dropped, including lapsed ones still in their grace (no other node
    /// may take those yet).
    pub fn list_leases(&self) -> Vec<Lease> {
        self.lock().leases.values().cloned().collect()
    }

    pub fn get_lease(&self, task_id: &str) -> Result<Lease, RegistryError> {
        self.lock()
            .leases
            .get(task_id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("task {task_id:?} holds no lease")))
    }

    /// Drops leases whose grace has passed and announces them; called by the ticker.
    pub(super) async fn expire_leases(&self) {
        let now = self.clock.now_ms();
        let grace = self.lease_grace_ms;
        let lapsed = |g: &super::Inner| -> Vec<Lease> {
            g.leases
                .values()
                .filter(|l| l.expires_at + grace <= now)
                .cloned()
                .collect()
        };
        let candidates = lapsed(&self.lock());
        if candidates.is_empty() {
            return;
        }
        if self.shared {
            // Renewed through another master? Only the stored rows say.
            let ids = candidates.into_iter().map(|l| l.task_id).collect();
            if let Err(e) = self.refresh_leases(Some(ids)).await {
                tracing::warn!(error = %e, "cannot read leases to drop lapsed ones; will retry");
                return;
            }
            if lapsed(&self.lock()).is_empty() {
                return;
            }
        }
        let dropped = self
            .change(
                |g| Ok(lapsed(g)),
                |s, leases| {
                    for l in leases {
                        s.lapse_lease(l)?;
                    }
                    Ok(())
                },
                |g, leases| {
                    for l in leases {
                        // Renewed meanwhile? Renewals of a lapsed lease are refused, so no.
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
                },
            )
            .await;
        if let Err(e) = dropped {
            tracing::error!(error = %e, "cannot drop lapsed leases; will retry");
        }
    }
}

/// Extends one lease in memory if `token` is current and has not expired (and, for a session,
/// is held by `node`); otherwise says why not.
fn renew_one(
    leases: &mut BTreeMap<String, Lease>,
    task_id: &str,
    token: u64,
    node: Option<&str>,
    ttl_ms: u64,
    now: u64,
) -> Result<LeaseGrant, String> {
    let Some(cur) = leases.get_mut(task_id) else {
        return Err(format!(
            "task {task_id} holds no lease (token {token} lapsed or was released); stop the task and acquire again"
        ));
    };
    let mine = cur.token == token && node.is_none_or(|n| n == cur.node);
    if !mine || cur.expires_at <= now {
        return Err(format!(
            "lease token {token} for task {task_id} lapsed or was superseded (current token {}, node {}); stop the task and acquire again",
            cur.token, cur.node
        ));
    }
    cur.expires_at = now + ttl_ms;
    cur.ttl_ms = ttl_ms;
    Ok(LeaseGrant {
        token,
        expires_at: cur.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shadow_common::{
        lease::{HeldLease, LeaseRenewal, LeaseRequest, SessionRenewal},
        node::NodeRegistration,
        task::TaskSpec,
        watch::WatchEvent,
    };

    use crate::{
        registry::{Registry, RegistryError},
        store::sqlite::SqliteStore,
    };

    async fn setup(dir: &std::path::Path) -> (Registry, String) {
        let store = SqliteStore::open(dir).expect("store");
        let reg = Registry::open(Box::new(store), Duration::from_secs(1)).expect("registry");
        for id in ["a", "b"] {
            reg.register_node(NodeRegistration {
                id: id.into(),
                address: "127.0.0.1:7071".into(),
                capacity: 1,
                volume_kinds: None,
            })
            .await
            .expect("node");
        }
        let spec = TaskSpec::from_json(
            br#"{"name":"t","domains":["t.example.com"],"image":"x","volume":{"kind":"local"}}"#,
        )
        .expect("spec");
        let task = reg.create_task(spec).await.expect("task").id;
        (reg, task)
    }

    fn req(node: &str, ttl_ms: u64) -> LeaseRequest {
        LeaseRequest {
            node: node.into(),
            ttl_ms,
        }
    }

    fn renewal(token: u64, ttl_ms: u64) -> LeaseRenewal {
        LeaseRenewal { token, ttl_ms }
    }

    async fn held_by(reg: &Registry, task: &str, node: &str) -> bool {
        matches!(
            reg.acquire_lease(task, req(node, 1_000)).await,
            Err(RegistryError::LeaseConflict { holder: Some(h), .. }) if h != node
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_lease_is_refused_to_others_for_the_grace_then_announced() {
        let dir = tempfile::tempdir().expect("tmp");
        let (reg, task) = setup(dir.path()).await;
        let reg = reg.with_lease_grace(Duration::from_millis(500));
        let a = reg.acquire_lease(&task, req("a", 1_000)).await.expect("a");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(held_by(&reg, &task, "b").await);
        // Renewing just in time keeps it.
        reg.renew_lease(&task, renewal(a.token, 1_000))
            .await
            .expect("renew in time");
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert!(
            reg.renew_lease(&task, renewal(a.token, 1_000))
                .await
                .is_err(),
            "a lease cannot be renewed at or after its expiry"
        );
        // Expired, but within the grace: still nobody else's, and not yet announced.
        let rev = reg.changes_since(None, 0).revision;
        tokio::time::advance(Duration::from_millis(499)).await;
        reg.tick().await;
        assert!(held_by(&reg, &task, "b").await, "refused during the grace");
        assert!(reg.changes_since(Some(&reg.epoch), rev).events.is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        reg.tick().await;
        let news = reg.changes_since(Some(&reg.epoch), rev);
        assert!(
            news.events.iter().any(|e| matches!(e, WatchEvent::LeaseReleased { expired: true, token, .. } if *token == a.token)),
            "the lapse is announced once the grace is over: {news:?}"
        );
        let b = reg
            .acquire_lease(&task, req("b", 1_000))
            .await
            .expect("b after the grace");
        assert!(b.token > a.token);
        assert!(
            reg.renew_lease(&task, renewal(a.token, 1_000))
                .await
                .is_err(),
            "the lapsed holder cannot renew"
        );
        assert!(
            reg.release_lease(&task, a.token).await.is_err(),
            "nor release b's lease"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_renews_all_its_leases_in_one_call_silently() {
        let dir = tempfile::tempdir().expect("tmp");
        let (reg, task) = setup(dir.path()).await;
        let spec = TaskSpec::from_json(
            br#"{"name":"u","domains":["u.example.com"],"image":"x","volume":{"kind":"local"}}"#,
        )
        .expect("spec");
        let other = reg.create_task(spec).await.expect("task").id;
        let a1 = reg.acquire_lease(&task, req("a", 1_000)).await.expect("a1");
        let a2 = reg
            .acquire_lease(&other, req("a", 1_000))
            .await
            .expect("a2");
        let rev = reg.changes_since(None, 0).revision;
        tokio::time::advance(Duration::from_millis(800)).await;
        let out = reg
            .renew_session(
                "a",
                SessionRenewal {
                    ttl_ms: 1_000,
                    leases: vec![
                        HeldLease {
                            task_id: task.clone(),
                            token: a1.token,
                        },
                        HeldLease {
                            task_id: other.clone(),
                            token: a2.token,
                        },
                        HeldLease {
                            task_id: other.clone(),
                            token: a1.token,
                        },
                    ],
                },
            )
            .await
            .expect("renewal");
        assert_eq!(out.renewed.len(), 2, "{out:?}");
        assert_eq!(out.lost.len(), 1, "a stale token is reported lost: {out:?}");
        assert_eq!(out.lost[0].token, a1.token);
        assert!(
            reg.changes_since(Some(&reg.epoch), rev).events.is_empty(),
            "renewals are not sent to watchers"
        );
        // 800 ms later the original expiry has passed; the renewed one has not.
        tokio::time::advance(Duration::from_millis(800)).await;
        reg.tick().await;
        assert!(held_by(&reg, &task, "b").await);
        assert!(held_by(&reg, &other, "b").await);
        // Another node cannot renew a's leases.
        let out = reg
            .renew_session(
                "b",
                SessionRenewal {
                    ttl_ms: 1_000,
                    leases: vec![HeldLease {
                        task_id: task.clone(),
                        token: a1.token,
                    }],
                },
            )
            .await
            .expect("renewal");
        assert!(out.renewed.is_empty() && out.lost.len() == 1, "{out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_master_re_arms_every_lease_for_a_full_ttl() {
        let dir = tempfile::tempdir().expect("tmp");
        let (reg, task) = setup(dir.path()).await;
        let a = reg.acquire_lease(&task, req("a", 1_000)).await.expect("a");
        // Renewed in memory only, then the master dies 900 ms later.
        tokio::time::advance(Duration::from_millis(600)).await;
        reg.renew_lease(&task, renewal(a.token, 1_000))
            .await
            .expect("renew");
        tokio::time::advance(Duration::from_millis(900)).await;
        drop(reg);
        let store = SqliteStore::open(dir.path()).expect("store");
        let reg = Registry::open(Box::new(store), Duration::from_secs(1))
            .expect("reopen")
            .with_lease_grace(Duration::from_millis(500));
        // The holder may have renewed while the master was down: its lease holds for a full
        // TTL from the restart (plus the grace), not from the stored expiry.
        tokio::time::advance(Duration::from_millis(999)).await;
        reg.tick().await;
        assert!(held_by(&reg, &task, "b").await);
        reg.renew_lease(&task, renewal(a.token, 1_000))
            .await
            .expect("the holder renews with its token after the restart");
        tokio::time::advance(Duration::from_millis(1_499)).await;
        reg.tick().await;
        assert!(held_by(&reg, &task, "b").await);
        tokio::time::advance(Duration::from_millis(1)).await;
        reg.tick().await;
        assert!(reg.acquire_lease(&task, req("b", 1_000)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_grow_across_tasks_and_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let (reg, task) = setup(dir.path()).await;
        let mut last = 0;
        for _ in 0..5 {
            let g = reg
                .acquire_lease(&task, req("a", 100))
                .await
                .expect("grant");
            assert!(g.token > last);
            last = g.token;
        }
        drop(reg);
        let store = SqliteStore::open(dir.path()).expect("store");
        let reg = Registry::open(Box::new(store), Duration::from_secs(1)).expect("reopen");
        let g = reg
            .acquire_lease(&task, req("a", 100))
            .await
            .expect("grant");
        assert!(g.token > last, "{} after {last}", g.token);
    }
}
