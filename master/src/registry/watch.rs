//! The watch: replaying events after a revision, waiting for the next one, and the ticker that
//! turns the passing of time (missed heartbeats, lapsed leases) into events.

use std::time::Duration;

use shadow_common::watch::{WatchEvent, WatchResponse};

use super::{NodeEntry, Registry};

/// The longest a lapsed lease waits to be announced.
const LAPSE_CHECK: Duration = Duration::from_millis(100);

impl Registry {
    /// Events after `since`, or the whole state when the client must start over.
    pub fn changes_since(&self, epoch: Option<&str>, since: u64) -> WatchResponse {
        let g = self.lock();
        let replayable =
            epoch == Some(self.epoch.as_str()) && since <= g.revision && since >= g.log_floor;
        if replayable {
            let events = g
                .log
                .iter()
                .filter(|(r, _)| *r > since)
                .map(|(_, e)| e.clone())
                .collect();
            return WatchResponse {
                epoch: self.epoch.clone(),
                revision: g.revision,
                reset: false,
                events,
            };
        }
        let mut events: Vec<WatchEvent> = g
            .tasks
            .values()
            .map(|t| WatchEvent::TaskPut {
                task: Box::new(t.clone()),
            })
            .collect();
        events.extend(g.nodes.values().map(|n| WatchEvent::NodePut {
            node: NodeEntry::status(n),
        }));
        // Until the ticker drops a lease (after its grace) it is still held: no one else may
        // take it, so edges must keep seeing its holder.
        events.extend(
            g.leases
                .values()
                .map(|l| WatchEvent::LeasePut { lease: l.clone() }),
        );
        events.extend(g.acme.values().map(|r| WatchEvent::AcmePut {
            record: Box::new(r.clone()),
        }));
        WatchResponse {
            epoch: self.epoch.clone(),
            revision: g.revision,
            reset: true,
            events,
        }
    }

    /// Long poll: answers at once if there is news for the client, else waits up to `timeout`.
    pub async fn watch(&self, epoch: Option<&str>, since: u64, timeout: Duration) -> WatchResponse {
        // A client that moved here from another master may have seen a revision this one has
        // not read yet: read it first (a revision no master has seen is still a reset).
        if self.shared && epoch == Some(self.epoch.as_str()) && since > self.lock().revision {
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "cannot read other masters' changes for a watch");
            }
        }
        let mut rx = self.revision_tx.subscribe();
        let resp = self.changes_since(epoch, since);
        if resp.reset || !resp.events.is_empty() {
            return resp;
        }
        let mut closing = self.closing.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r > since)) => {}
            _ = closing.wait_for(|c| *c) => {}
        }
        self.changes_since(epoch, since)
    }

    /// Answers every open long poll now and every later one at once: the master is stopping,
    /// and its watchers should move to another master rather than wait out their polls.
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
    }

    /// Runs the periodic checks until dropped.
    pub async fn tick_forever(&self) {
        // Half the heartbeat interval: a node is seen unhealthy at most half an interval late;
        // at most 100 ms, so a lapsed lease is announced (and its waiters woken) promptly.
        let mut every = tokio::time::interval(
            (self.heartbeat_interval / 2).clamp(Duration::from_millis(10), LAPSE_CHECK),
        );
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.tick().await;
        }
    }

    pub async fn tick(&self) {
        self.check_node_health().await;
        self.expire_leases().await;
    }
}
