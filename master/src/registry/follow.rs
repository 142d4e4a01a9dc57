//! Following a shared store: applying what other masters wrote (the store's change log) to
//! this master's memory, with the same revisions, so a watcher can move between masters and
//! resume where it was.

use std::{sync::Arc, time::Duration};

use shadow_common::watch::WatchEvent;

use super::{status, Inner, NodeEntry, Registry, RegistryError};
use crate::store::{Change, Changed};

/// How often a master reads the log even without a notification (one may be lost while the
/// listening connection reconnects).
const POLL: Duration = Duration::from_secs(1);
/// How often the clock is set to the database's again.
const ALIGN: Duration = Duration::from_secs(10);
/// Change-log entries kept for masters that fell behind (older ones are pruned).
const KEEP: u64 = 100_000;

impl Registry {
    /// Whether other masters may write this registry's store.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Applies what other masters wrote since this one last looked.
    pub async fn catch_up(&self) -> Result<(), RegistryError> {
        if !self.shared {
            return Ok(());
        }
        let _one = self.writer.lock().await;
        self.catch_up_holding_writer().await
    }

    pub(super) async fn catch_up_holding_writer(&self) -> Result<(), RegistryError> {
        let from = self.lock().revision;
        match self.store.run(move |s| s.changes_since(from)).await? {
            Some(changes) => {
                let mut g = self.lock();
                for c in changes {
                    self.apply_change(&mut g, c);
                }
            }
            None => self.reload().await?,
        }
        Ok(())
    }

    /// Starts over from the whole state: this master fell behind further than the log goes
    /// back. Watchers get the whole state too (their revisions are older than the new floor).
    pub(super) async fn reload(&self) -> Result<(), RegistryError> {
        let load = self.store.run(|s| s.load_shared()).await?;
        tracing::warn!(
            head = load.head,
            "fell behind the change log; reloaded the whole state"
        );
        let mut g = self.lock();
        let at = load.head;
        let snap = load.snapshot;
        let mut whole: Vec<Changed> = vec![];
        let mut live: std::collections::HashMap<_, _> = load.live.into_iter().collect();
        for id in g.tasks.keys() {
            if !snap.tasks.iter().any(|t| &t.id == id) {
                whole.push(Changed::Task {
                    id: id.clone(),
                    now: None,
                });
            }
        }
        for id in g.nodes.keys() {
            if !snap.nodes.iter().any(|n| &n.id == id) {
                whole.push(Changed::Node {
                    id: id.clone(),
                    reg: None,
                    live: None,
                });
            }
        }
        for id in g.leases.keys() {
            if !snap.leases.iter().any(|l| &l.task_id == id) {
                whole.push(Changed::Lease {
                    task_id: id.clone(),
                    now: None,
                    lapsed: false,
                    next_token: snap.next_token,
                });
            }
        }
        for key in g.acme.keys() {
            if !snap.acme.iter().any(|r| &r.key() == key) {
                whole.push(Changed::Acme {
                    key: key.clone(),
                    now: None,
                });
            }
        }
        whole.extend(snap.tasks.into_iter().map(|t| Changed::Task {
            id: t.id.clone(),
            now: Some(t),
        }));
        whole.extend(snap.nodes.into_iter().map(|reg| Changed::Node {
            id: reg.id.clone(),
            live: live.remove(&reg.id),
            reg: Some(reg),
        }));
        whole.extend(snap.leases.into_iter().map(|l| Changed::Lease {
            task_id: l.task_id.clone(),
            now: Some(l),
            lapsed: false,
            next_token: snap.next_token,
        }));
        whole.extend(snap.acme.into_iter().map(|r| Changed::Acme {
            key: r.key(),
            now: Some(r),
        }));
        whole.push(Changed::AcmeAccount(snap.acme_account));
        whole.extend(load.statuses.into_iter().map(|st| Changed::Status {
            task: st.task_id.clone(),
            node: st.node.clone(),
            now: Some(st),
        }));
        for what in whole {
            self.apply_change(&mut g, Change { revision: at, what });
        }
        g.log.clear();
        g.log_floor = at;
        Ok(())
    }

    /// Applies one entry of the log; announces only what a follower acts on.
    pub(super) fn apply_change(&self, g: &mut Inner, c: Change) {
        // Older than what memory holds (a reload applies many at one revision).
        if c.revision < g.revision {
            return;
        }
        g.emit_at = Some(c.revision);
        match c.what {
            Changed::Task { id, now } => self.apply_task(g, id, now),
            Changed::Node { id, reg, live } => match reg {
                None => {
                    if g.nodes.remove(&id).is_some() {
                        for per_node in g.statuses.values_mut() {
                            per_node.remove(&id);
                        }
                        g.emit(&self.revision_tx, WatchEvent::NodeDeleted { id });
                    }
                }
                Some(reg) => {
                    let before = g.nodes.get(&id).map(NodeEntry::status);
                    let entry = g
                        .nodes
                        .entry(id)
                        .or_insert_with(|| NodeEntry::new(reg.clone()));
                    entry.reg = reg;
                    if let Some(l) = live {
                        entry.running = l.running;
                        entry.load = l.load;
                        entry.healthy = l.healthy;
                        entry.last_heartbeat_ms = entry.last_heartbeat_ms.max(Some(l.at_ms));
                    }
                    let after = entry.status();
                    let moved = before.is_none_or(|b| {
                        b.healthy != after.healthy
                            || b.running != after.running
                            || b.address != after.address
                            || b.capacity != after.capacity
                            || b.volume_kinds != after.volume_kinds
                            || (b.load - after.load).abs() > 0.05
                    });
                    if moved {
                        g.emit(&self.revision_tx, WatchEvent::NodePut { node: after });
                    }
                }
            },
            Changed::Lease {
                task_id,
                now,
                lapsed,
                next_token,
            } => {
                g.next_token = g.next_token.max(next_token);
                match now {
                    None => {
                        if let Some(old) = g.leases.remove(&task_id) {
                            g.emit(
                                &self.revision_tx,
                                WatchEvent::LeaseReleased {
                                    task_id,
                                    token: old.token,
                                    expired: lapsed,
                                },
                            );
                        }
                    }
                    Some(lease) => {
                        let same_grant = g
                            .leases
                            .get(&task_id)
                            .is_some_and(|l| l.token == lease.token && l.node == lease.node);
                        // A renewal: only the expiry moved, which no follower acts on.
                        g.leases.insert(task_id, lease.clone());
                        if !same_grant {
                            g.emit(&self.revision_tx, WatchEvent::LeasePut { lease });
                        }
                    }
                }
            }
            Changed::Acme { key, now } => match now {
                None => {
                    if g.acme.remove(&key).is_some() {
                        g.emit(&self.revision_tx, WatchEvent::AcmeDeleted { key });
                    }
                }
                Some(record) => {
                    if g.acme.get(&key) != Some(&record) {
                        g.acme.insert(key, record.clone());
                        g.emit(
                            &self.revision_tx,
                            WatchEvent::AcmePut {
                                record: Box::new(record),
                            },
                        );
                    }
                }
            },
            Changed::AcmeAccount(account) => g.acme_account = account,
            Changed::Status { task, node, now } => match now {
                Some(st) => status::record(g, st),
                None => {
                    if let Some(m) = g.statuses.get_mut(&task) {
                        m.remove(&node);
                    }
                }
            },
        }
        g.emit_at = None;
        g.revision = c.revision;
        self.revision_tx.send_replace(c.revision);
    }

    fn apply_task(&self, g: &mut Inner, id: String, now: Option<shadow_common::task::Task>) {
        match now {
            None => {
                if let Some(old) = g.tasks.get(&id).cloned() {
                    self.forget_task(g, &id, &old);
                }
            }
            Some(task) => {
                if g.tasks.get(&id) == Some(&task) {
                    return;
                }
                if let Some(old) = g.tasks.get(&id) {
                    for d in old.spec.domains.clone() {
                        g.domains.remove(&d);
                    }
                }
                for d in &task.spec.domains {
                    g.domains.insert(d.clone(), id.clone());
                }
                g.tasks.insert(id, task.clone());
                g.emit(
                    &self.revision_tx,
                    WatchEvent::TaskPut {
                        task: Box::new(task),
                    },
                );
            }
        }
    }

    /// Follows the store until dropped: catches up on every `notify` (the store's listener)
    /// and at least every second, aligns the clock, and prunes the log.
    pub async fn follow_forever(self: Arc<Self>, notify: Arc<tokio::sync::Notify>) {
        let mut align = tokio::time::interval(ALIGN);
        align.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut aligned = 0u64;
        loop {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = align.tick() => {
                    match self.store.run(|s| s.now_ms()).await {
                        Ok(Some(db_now)) => self.clock.align(db_now),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot read the database's clock"),
                    }
                    aligned += 1;
                    // Every few minutes: one master's prune is everyone's.
                    if aligned.is_multiple_of(30) {
                        if let Err(e) = self.store.run(|s| s.prune(KEEP)).await {
                            tracing::warn!(error = %e, "cannot prune the change log");
                        }
                    }
                }
            }
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "cannot read other masters' changes; retrying");
            }
        }
    }
}
