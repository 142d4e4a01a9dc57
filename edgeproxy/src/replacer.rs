//! Replaces dead nodes through the configured [`NodeProvider`], one edge at a time.
//!
//! The replacer follows the master's view of the nodes (through the edge's follower). A node the
//! master marks unhealthy is replaced once it has stayed unhealthy for the grace period
//! (`SHADOW_REPLACE_GRACE_S`), so a blip costs no money. Then, under the cluster-wide master
//! lock `_replace-nodes` (held by the edge id, short TTL, renewed while working, released after):
//! 1. ask the master whether the node is still unhealthy (not the local copy: it may lag);
//! 2. claim the marker lease `_replaced-<node id>` for the cooldown; if another edge holds one,
//!    that edge has handled this node: do nothing;
//! 3. call the provider; log and count the outcome in `shadow_edge_node_replacements_total`;
//! 4. when the provider removed the dead machine, delete the node from the master's list.
//!
//! # Rate limits
//! - At most one attempt per node id per cooldown (`SHADOW_REPLACE_COOLDOWN_S`), by this edge (in
//!   memory, on tokio's clock) and across edges (the marker lease; the master caps a lease at one
//!   hour, so a cooldown above that is enforced across edges for one hour only).
//! - A node replaced successfully is not replaced again while it stays unhealthy (the master
//!   keeps listing dead nodes); only after it has been healthy again and then died again, and the
//!   cooldown has passed. This memory is in process: an edge restarted after the cooldown may
//!   replace a still-listed dead node once more, unless the node is older than the horizon below.
//! - A node whose last heartbeat is older than `SHADOW_REPLACE_MAX_DEAD_S` (wall clock, from the
//!   master) is taken as retired and never replaced; nor is one the master has heard nothing from
//!   since it started (its age is unknown). Both are logged once, for an operator to handle.
//!
//! The pure decision (which nodes are due, when to look again) is [`Schedule`]; the I/O with the
//! master is behind [`Cluster`], implemented for the real master by [`MasterCluster`].

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use prometheus::{IntCounterVec, Opts};
use shadow_common::{
    client::{ClientError, MasterClient},
    follower::Follower,
    lease::{MAX_TTL_MS, MIN_TTL_MS},
    node::NodeStatus,
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::provider::{NodeProvider, Replacement};

/// The master lock only one edge at a time holds while replacing nodes.
pub const LOCK: &str = "_replace-nodes";

/// The marker lease an edge takes on a node it replaces, for the cooldown.
pub fn marker(node_id: &str) -> String {
    format!("_replaced-{node_id}")
}

/// When and how carefully to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacerConfig {
    /// `SHADOW_REPLACE_GRACE_S` [default: 10]: how long a node must stay unhealthy first.
    pub grace: Duration,
    /// `SHADOW_REPLACE_COOLDOWN_S` [default: 300]: at most one attempt per node per cooldown.
    pub cooldown: Duration,
    /// `SHADOW_REPLACE_MAX_DEAD_S` [default: 3600]: a node whose last heartbeat is older is retired.
    pub max_dead: Duration,
    /// TTL of the `_replace-nodes` lock, renewed every third of it [default: 30 s].
    pub lock_ttl: Duration,
    /// When the lock is busy or the master unreachable, look again after this [default: 5 s].
    pub retry: Duration,
}

impl Default for ReplacerConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            cooldown: Duration::from_secs(300),
            max_dead: Duration::from_secs(3600),
            lock_ttl: Duration::from_secs(30),
            retry: Duration::from_secs(5),
        }
    }
}

/// How an attempt on a node ended, as far as the [`Schedule`] cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider replaced it (or, for `static`, reported it).
    Replaced,
    /// The provider failed; try again after the cooldown.
    Failed,
    /// Another edge holds the node's marker: it has handled the node.
    HandledElsewhere,
    /// Nothing was tried (lock busy, master unreachable, node healthy again); look again soon.
    NotTried,
}

/// What this edge remembers of one node.
#[derive(Debug, Default)]
struct Track {
    /// Since when this edge has seen the node unhealthy; `None` while healthy.
    unhealthy_since: Option<Instant>,
    /// The last attempt (or the other edge's, as learned), for the cooldown.
    last_attempt: Option<Instant>,
    /// Replaced during the current unhealthy spell: not again until it was healthy again.
    handled: bool,
    /// No new attempt before this (lock busy, master unreachable).
    not_before: Option<Instant>,
    /// Already told the operator why this spell is not acted on.
    warned: bool,
}

/// What [`Schedule::poll`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Nodes to replace now.
    pub due: Vec<NodeStatus>,
    /// When a node may become due without any change from the master.
    pub wake_at: Option<Instant>,
}

/// The decision logic, free of I/O: feed it the master's view and the time.
#[derive(Debug)]
pub struct Schedule {
    config: ReplacerConfig,
    nodes: HashMap<String, Track>,
}

impl Schedule {
    pub fn new(config: ReplacerConfig) -> Self {
        Self {
            config,
            nodes: HashMap::new(),
        }
    }

    /// Takes in the nodes as the master sees them at `now` (tokio's clock; `now_ms` is the wall
    /// clock in ms since the Unix epoch, to compare with heartbeats) and says which are due.
    pub fn poll<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a NodeStatus>,
        now: Instant,
        now_ms: u64,
    ) -> Decision {
        let c = self.config;
        let mut due = Vec::new();
        let mut wake_at: Option<Instant> = None;
        for node in nodes {
            let t = self.nodes.entry(node.id.clone()).or_default();
            if node.healthy {
                t.unhealthy_since = None;
                t.handled = false;
                t.not_before = None;
                t.warned = false;
                continue;
            }
            let since = *t.unhealthy_since.get_or_insert(now);
            if t.handled {
                continue;
            }
            let age_ok = match node.last_heartbeat_ms {
                Some(ms) => now_ms.saturating_sub(ms) <= c.max_dead.as_millis() as u64,
                None => false,
            };
            if !age_ok {
                if !t.warned {
                    t.warned = true;
                    tracing::warn!(
                        node = %node.id,
                        address = %node.address,
                        last_heartbeat_ms = ?node.last_heartbeat_ms,
                        "node is unhealthy but its last heartbeat is older than SHADOW_REPLACE_MAX_DEAD_S or unknown (none since the master started); not replacing it automatically: replace it by hand if it is still needed"
                    );
                }
                continue;
            }
            let ready_at = [
                Some(since + c.grace),
                t.last_attempt.map(|a| a + c.cooldown),
                t.not_before,
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(now);
            if ready_at <= now {
                due.push(node.clone());
            } else {
                wake_at = Some(wake_at.map_or(ready_at, |w| w.min(ready_at)));
            }
        }
        Decision { due, wake_at }
    }

    /// Records how an attempt on `node_id` at `now` ended.
    pub fn record(&mut self, node_id: &str, now: Instant, outcome: Outcome) {
        let t = self.nodes.entry(node_id.to_string()).or_default();
        match outcome {
            Outcome::Replaced | Outcome::HandledElsewhere => {
                t.last_attempt = Some(now);
                t.handled = true;
            }
            Outcome::Failed => t.last_attempt = Some(now),
            Outcome::NotTried => t.not_before = Some(now + self.config.retry),
        }
    }
}

/// What the replacer needs from the master. The real one is [`MasterCluster`].
#[async_trait]
pub trait Cluster: Send + Sync {
    /// The nodes in the local copy of the master's state.
    fn nodes(&self) -> Vec<NodeStatus>;
    /// Changes whenever the local copy may have; closed when it stops being followed.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Takes the `_replace-nodes` lock: its token, or `None` when another edge holds it.
    async fn try_lock(&self, ttl: Duration) -> Result<Option<u64>, ClientError>;
    async fn renew_lock(&self, token: u64, ttl: Duration) -> Result<(), ClientError>;
    async fn unlock(&self, token: u64) -> Result<(), ClientError>;
    /// The node as the master sees it now (not the local copy).
    async fn node(&self, id: &str) -> Result<Option<NodeStatus>, ClientError>;
    /// Takes the node's marker lease for `ttl`; false when any edge holds a live one already.
    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<bool, ClientError>;
    /// Removes a node whose machine is gone from the master's list.
    async fn forget(&self, node_id: &str) -> Result<(), ClientError>;
}

/// The real master: its client, the edge's follower and the edge id as lock holder.
#[derive(Debug, Clone)]
pub struct MasterCluster {
    pub client: MasterClient,
    pub follower: Follower,
    pub edge_id: String,
}

#[async_trait]
impl Cluster for MasterCluster {
    fn nodes(&self) -> Vec<NodeStatus> {
        self.follower
            .read()
            .nodes()
            .map(|n| (**n).clone())
            .collect()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.follower.changes()
    }
    async fn try_lock(&self, ttl: Duration) -> Result<Option<u64>, ClientError> {
        match self.client.acquire_lease(LOCK, &self.edge_id, ttl).await {
            Ok(grant) => Ok(Some(grant.token)),
            Err(ClientError::LeaseConflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn renew_lock(&self, token: u64, ttl: Duration) -> Result<(), ClientError> {
        self.client.renew_lease(LOCK, token, ttl).await.map(drop)
    }
    async fn unlock(&self, token: u64) -> Result<(), ClientError> {
        self.client.release_lease(LOCK, token).await
    }
    async fn node(&self, id: &str) -> Result<Option<NodeStatus>, ClientError> {
        Ok(self
            .client
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.id == id))
    }
    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<bool, ClientError> {
        let name = marker(node_id);
        // Any live marker counts, ours too: this edge may have restarted within the cooldown.
        if self
            .client
            .list_leases()
            .await?
            .iter()
            .any(|l| l.task_id == name)
        {
            return Ok(false);
        }
        match self.client.acquire_lease(&name, &self.edge_id, ttl).await {
            Ok(_) => Ok(true),
            Err(ClientError::LeaseConflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    async fn forget(&self, node_id: &str) -> Result<(), ClientError> {
        self.client.delete_node(node_id).await
    }
}

/// Watches for dead nodes and has them replaced; see the module docs.
pub struct Replacer {
    provider: Arc<dyn NodeProvider>,
    cluster: Arc<dyn Cluster>,
    config: ReplacerConfig,
    schedule: Schedule,
    replacements: IntCounterVec,
}

impl Replacer {
    /// A replacer for the edge `edge_id` on the real master.
    pub fn new(
        provider: Arc<dyn NodeProvider>,
        client: MasterClient,
        follower: Follower,
        edge_id: impl Into<String>,
        config: ReplacerConfig,
    ) -> Self {
        let cluster = MasterCluster {
            client,
            follower,
            edge_id: edge_id.into(),
        };
        Self::with_cluster(provider, Arc::new(cluster), config)
    }

    /// A replacer on any [`Cluster`] (tests use a fake one).
    pub fn with_cluster(
        provider: Arc<dyn NodeProvider>,
        cluster: Arc<dyn Cluster>,
        config: ReplacerConfig,
    ) -> Self {
        let replacements = IntCounterVec::new(
            Opts::new(
                "shadow_edge_node_replacements_total",
                "Dead nodes handed to the node provider, by provider and outcome (ok, error)",
            ),
            &["provider", "outcome"],
        )
        .expect("static metric definition");
        Self {
            provider,
            cluster,
            config,
            schedule: Schedule::new(config),
            replacements,
        }
    }

    /// The `shadow_edge_node_replacements_total{provider, outcome}` counter, to register.
    pub fn metrics(&self) -> IntCounterVec {
        self.replacements.clone()
    }

    /// Runs in a background task until `shutdown` resolves.
    pub fn spawn(self, shutdown: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Runs until `shutdown` resolves or the followed state goes away. Stopping mid-attempt
    /// leaves the lock to lapse by its TTL.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.watch() => {}
        }
    }

    async fn watch(&mut self) {
        let mut changes = self.cluster.changes();
        loop {
            changes.mark_unchanged();
            let nodes = self.cluster.nodes();
            let decision = self.schedule.poll(&nodes, Instant::now(), wall_ms());
            if !decision.due.is_empty() {
                for node in decision.due {
                    let outcome = self.attempt(&node).await;
                    self.schedule.record(&node.id, Instant::now(), outcome);
                }
                continue;
            }
            let wake = async {
                match decision.wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tracing::info!("the master's state is no longer followed; node replacement stops");
                        return;
                    }
                }
                _ = wake => {}
            }
        }
    }

    /// One attempt under the lock; never fails, says how it ended.
    async fn attempt(&self, node: &NodeStatus) -> Outcome {
        let ttl = self.config.lock_ttl;
        let token = match self.cluster.try_lock(ttl).await {
            Ok(Some(token)) => token,
            Ok(None) => {
                tracing::debug!(node = %node.id, "another edge holds {LOCK}; looking again later");
                return Outcome::NotTried;
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot take {LOCK} on the master; looking again later");
                return Outcome::NotTried;
            }
        };
        let keep = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if let Err(e) = self.cluster.renew_lock(token, ttl).await {
                    // The work goes on: aborting a half-done replacement helps no one, and the
                    // node's marker keeps another edge from replacing it again.
                    tracing::warn!(error = %e, "cannot renew {LOCK}");
                }
            }
        };
        let outcome = tokio::select! {
            o = self.locked(node) => o,
            _ = keep => Outcome::NotTried,
        };
        if let Err(e) = self.cluster.unlock(token).await {
            tracing::warn!(error = %e, "cannot release {LOCK}; it lapses by itself");
        }
        outcome
    }

    async fn locked(&self, node: &NodeStatus) -> Outcome {
        let fresh = match self.cluster.node(&node.id).await {
            Ok(Some(n)) if !n.healthy => n,
            Ok(Some(_)) => {
                tracing::info!(node = %node.id, "node is healthy again; not replacing it");
                return Outcome::NotTried;
            }
            Ok(None) => {
                tracing::info!(node = %node.id, "the master no longer lists the node; not replacing it");
                return Outcome::NotTried;
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot re-check the node on the master; looking again later");
                return Outcome::NotTried;
            }
        };
        let marker_ttl = self.config.cooldown.clamp(
            Duration::from_millis(MIN_TTL_MS),
            Duration::from_millis(MAX_TTL_MS),
        );
        match self.cluster.claim(&node.id, marker_ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(node = %node.id, "another edge has just handled the node");
                return Outcome::HandledElsewhere;
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot mark the node on the master; looking again later");
                return Outcome::NotTried;
            }
        }
        let provider = self.provider.name();
        tracing::info!(node = %fresh.id, address = %fresh.address, provider, "replacing a dead node");
        match self.provider.replace(&fresh).await {
            Ok(Replacement {
                new_instance,
                removed,
            }) => {
                self.replacements.with_label_values(&[provider, "ok"]).inc();
                tracing::info!(node = %fresh.id, provider, new_instance = ?new_instance, removed = ?removed, "dead node handled");
                // Its machine is gone: drop it from the master's list, so the list holds
                // machines, not history. A provider that removed nothing (`static`) leaves
                // the node listed for the operator.
                if removed.is_some() {
                    if let Err(e) = self.cluster.forget(&fresh.id).await {
                        tracing::warn!(node = %fresh.id, error = %e, "cannot remove the replaced node from the master; delete it with DELETE /nodes/{{id}}");
                    }
                }
                Outcome::Replaced
            }
            Err(e) => {
                self.replacements
                    .with_label_values(&[provider, "error"])
                    .inc();
                tracing::error!(node = %fresh.id, provider, error = %e, "replacing the dead node failed; trying again after the cooldown");
                Outcome::Failed
            }
        }
    }
}

/// Wall-clock ms since the Unix epoch, to compare with the master's heartbeat times.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
