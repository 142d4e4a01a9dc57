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
