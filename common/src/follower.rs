//! Follows the master's watch and keeps a [`ClusterState`] up to date, reconnecting with backoff.
//!
//! Request paths read the local copy and never wait on the master once it has synced.

use std::{
    sync::{Arc, RwLock, RwLockReadGuard},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    backoff::Backoff,
    client::{jitter, MasterClient},
    state::ClusterState,
};

/// A handle on the followed state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Follower {
    state: Arc<RwLock<ClusterState>>,
    /// Counts local changes (0 = not synced yet).
    revision: watch::Receiver<u64>,
}

/// How long a request for a domain no task serves waits for this copy to learn one that does
/// (see [`Follower::task_by_domain_within`]). The watch brings a new task within milliseconds.
pub const NEW_DOMAIN_GRACE: Duration = Duration::from_millis(500);

/// How long one long poll waits on the master before asking again.
const POLL: Duration = Duration::from_secs(25);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Follower {
    /// Starts following in a background task that ends when `shutdown` resolves.
    pub fn spawn(
        client: MasterClient,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Follower {
        let state = Arc::new(RwLock::new(ClusterState::default()));
        let (tx, rx) = watch::channel(0u64);
        let follower = Follower {
            state: state.clone(),
            revision: rx,
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = follow(client, state, tx) => {}
                _ = shutdown => {}
            }
        });
        follower
    }

    /// A copy fed by the caller instead of a master (tests of what reads it, tools), already
    /// synced: each event given to the returned [`Feed`] is applied at once.
    pub fn local() -> (Follower, Feed) {
        let state = Arc::new(RwLock::new(ClusterState::default()));
        let (tx, rx) = watch::channel(1u64);
        let follower = Follower {
            state: state.clone(),
            revision: rx,
        };
        (follower, Feed { state, tx })
    }

    /// Read access to the local copy; never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the first answer from the master has been applied.
    pub async fn synced(&self) {
        let mut rx = self.revision.clone();
        let _ = rx.wait_for(|v| *v > 0).await;
    }

    /// Waits until `pred` holds for the local copy, re-checking after every change.
    pub async fn wait_until(&self, mut pred: impl FnMut(&ClusterState) -> bool) {
        let mut rx = self.revision.clone();
        loop {
            if pred(&self.read()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The task serving `domain`, waiting up to `grace` for the copy to learn it.
    ///
    /// A task registered a moment ago reaches this copy a moment later, by the master's watch:
    /// a client that registers an app and sends it a request at once must not be told that no
    /// app serves it. A domain that stays unknown costs its request `grace`, nothing more.
    pub async fn task_by_domain_within(
        &self,
        domain: &str,
        grace: Duration,
    ) -> Option<Arc<crate::task::Task>> {
        let mut found = None;
        let _ = tokio::time::timeout(
            grace,
            self.wait_until(|s| {
                found = s.task_by_domain(domain);
                found.is_some()
            }),
        )
        .await;
        found
    }

    /// Whether the first answer from the master has been applied.
    pub fn is_synced(&self) -> bool {
        *self.revision.borrow() > 0
    }

    /// A receiver that changes whenever the copy does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }
}

/// Feeds a [`Follower::local`] copy.
pub struct Feed {
    state: Arc<RwLock<ClusterState>>,
    tx: watch::Sender<u64>,
}

impl Feed {
    /// Applies `event` and wakes whoever waits on the copy.
    pub fn apply(&self, event: &crate::watch::WatchEvent) {
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(event);
        self.tx.send_modify(|v| *v += 1);
    }
}

async fn follow(client: MasterClient, state: Arc<RwLock<ClusterState>>, tx: watch::Sender<u64>) {
    let mut epoch: Option<String> = None;
    let mut since = 0u64;
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    loop {
        match client.watch(epoch.as_deref(), since, POLL).await {
            Ok(resp) => {
                backoff.reset();
                if resp.reset || !resp.events.is_empty() || epoch.is_none() {
                    {
                        let mut s = state.write().unwrap_or_else(|e| e.into_inner());
                        s.apply_response(&resp);
                    }
                    // A local change counter: a new master epoch may restart its revisions.
                    tx.send_modify(|v| *v += 1);
                }
                since = resp.revision;
                epoch = Some(resp.epoch);
            }
            Err(e) => {
                // Jittered: a master's restart must not bring every node back in one moment.
                let step = backoff.next_delay();
                let wait = step / 2 + jitter(step);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "watch on the master failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{task::Task, watch::WatchEvent};

    fn task(id: &str, domain: &str) -> Task {
        let spec = serde_json::json!({"name": id, "domains": [domain], "image": "app:1"});
        Task {
            id: id.into(),
            spec: crate::task::TaskSpec::from_json(spec.to_string().as_bytes()).expect("spec"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_domain_learned_within_the_grace_is_served() {
        let (follower, feed) = Follower::local();
        let started = tokio::time::Instant::now();
        let asking = tokio::spawn({
            let follower = follower.clone();
            async move {
                follower
                    .task_by_domain_within("new.example", Duration::from_millis(500))
                    .await
            }
        });
        // Another change first: the wait goes on through it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        feed.apply(&WatchEvent::TaskPut {
            task: Box::new(task("other", "other.example")),
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        feed.apply(&WatchEvent::TaskPut {
            task: Box::new(task("t1", "new.example")),
        });
        let found = asking.await.expect("joined").expect("the new task");
        assert_eq!(found.id, "t1");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "answered when learned"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_domain_costs_no_wait_and_an_unknown_one_the_grace() {
        let (follower, feed) = Follower::local();
        feed.apply(&WatchEvent::TaskPut {
            task: Box::new(task("t1", "known.example")),
        });
        let started = tokio::time::Instant::now();
        let known = follower
            .task_by_domain_within("known.example", Duration::from_millis(500))
            .await;
        assert_eq!(known.map(|t| t.id.clone()).as_deref(), Some("t1"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        let unknown = follower
            .task_by_domain_within("unknown.example", Duration::from_millis(500))
            .await;
        assert!(unknown.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }
}
