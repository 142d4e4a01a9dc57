//! The replacer: grace, cooldown and retry on tokio's paused clock with a fake master and a
//! recording provider; then two edges on a real master, of which exactly one replaces the node.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use shadow_common::{
    client::ClientError,
    follower::Follower,
    node::{Heartbeat, NodeRegistration, NodeStatus},
    watch::WatchEvent,
};
use shadow_edgeproxy::{
    provider::{NodeProvider, ProviderError, Replacement},
    replacer::{marker, Cluster, Replacer, ReplacerConfig, LOCK},
};
use shadow_tests::master::{self, MasterOptions};
use tokio::{
    sync::{mpsc, watch},
    time::{sleep, Instant},
};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Records every call (edge, node) on a channel; answers from a script, then `Ok`.
struct Recording {
    edge: String,
    calls: mpsc::UnboundedSender<(String, String)>,
    script: Mutex<VecDeque<Result<Replacement, ProviderError>>>,
}

impl Recording {
    fn new(edge: &str) -> (Arc<Self>, mpsc::UnboundedReceiver<(String, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self::with_sender(edge, tx), rx)
    }
    fn with_sender(edge: &str, calls: mpsc::UnboundedSender<(String, String)>) -> Arc<Self> {
        Arc::new(Recording {
            edge: edge.into(),
            calls,
            script: Mutex::new(VecDeque::new()),
        })
    }
}

#[async_trait]
impl NodeProvider for Recording {
    async fn replace(&self, dead: &NodeStatus) -> Result<Replacement, ProviderError> {
        let _ = self.calls.send((self.edge.clone(), dead.id.clone()));
        self.script
            .lock()
            .expect("script")
            .pop_front()
            .unwrap_or_else(|| Ok(Replacement::default()))
    }
    fn name(&self) -> &'static str {
        "recording"
    }
}

/// The master's side, in memory: nodes the test sets, a lock it can hold, marker leases.
struct FakeCluster {
    nodes: Mutex<Vec<NodeStatus>>,
    changes: watch::Sender<u64>,
    lock_held_elsewhere: AtomicBool,
    markers: Mutex<HashMap<String, Instant>>,
    forgotten: Mutex<Vec<String>>,
}

impl FakeCluster {
    fn new() -> Arc<Self> {
        Arc::new(FakeCluster {
            nodes: Mutex::new(vec![]),
            changes: watch::channel(0).0,
            lock_held_elsewhere: AtomicBool::new(false),
            markers: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(vec![]),
        })
    }

    /// Sets the node's health as the master sees it, heard from `age` ago.
    fn set(&self, id: &str, healthy: bool, age: Duration) {
        let status = NodeStatus {
            id: id.into(),
            address: format!("10.0.0.{}:7071", id.len()),
            capacity: 10,
            running: vec![],
            load: 0.0,
            last_heartbeat_ms: Some(wall_ms() - age.as_millis() as u64),
            healthy,
            volume_kinds: None,
        };
        let mut nodes = self.nodes.lock().expect("nodes");
        nodes.retain(|n| n.id != id);
        nodes.push(status);
        drop(nodes);
        self.changes.send_modify(|v| *v += 1);
    }
}

#[async_trait]
impl Cluster for FakeCluster {
    fn nodes(&self) -> Vec<NodeStatus> {
        self.nodes.lock().expect("nodes").clone()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    async fn try_lock(&self, _ttl: Duration) -> Result<Option<u64>, ClientError> {
        Ok((!self.lock_held_elsewhere.load(Ordering::SeqCst)).then_some(1))
    }
    async fn renew_lock(&self, _token: u64, _ttl: Duration) -> Result<(), ClientError> {
        Ok(())
    }
    async fn unlock(&self, _token: u64) -> Result<(), ClientError> {
        Ok(())
    }
    async fn node(&self, id: &str) -> Result<Option<NodeStatus>, ClientError> {
        Ok(self.nodes().into_iter().find(|n| n.id == id))
    }
    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<bool, ClientError> {
        let mut m = self.markers.lock().expect("markers");
        let now = Instant::now();
        if m.get(node_id).is_some_and(|exp| *exp > now) {
            return Ok(false);
        }
        m.insert(node_id.to_string(), now + ttl);
        Ok(true)
    }
    async fn forget(&self, node_id: &str) -> Result<(), ClientError> {
        self.nodes
            .lock()
            .expect("nodes")
            .retain(|n| n.id != node_id);
        self.forgotten
            .lock()
            .expect("forgotten")
            .push(node_id.to_string());
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }
}

fn config() -> ReplacerConfig {
    ReplacerConfig {
        grace: Duration::from_secs(10),
        cooldown: Duration::from_secs(300),
        max_dead: Duration::from_secs(3600),
        lock_ttl: Duration::from_secs(30),
        retry: Duration::from_secs(5),
    }
}

const S: Duration = Duration::from_secs(1);

/// Starts a replacer on the fake; returns its provider's calls and the metrics.
fn start(
    cluster: &Arc<FakeCluster>,
    provider: Arc<Recording>,
) -> (prometheus::IntCounterVec, tokio::task::JoinHandle<()>) {
    let r = Replacer::with_cluster(provider, cluster.clone(), config());
    let metrics = r.metrics();
    (metrics, r.spawn(std::future::pending()))
}

fn drain(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> Vec<String> {
    let mut v = vec![];
    while let Ok((_, node)) = rx.try_recv() {
        v.push(node);
    }
    v
}

#[tokio::test(start_paused = true)]
async fn a_flapping_node_costs_nothing_and_a_dead_one_is_replaced_once_after_the_grace() {
    let cluster = FakeCluster::new();
    let (provider, mut calls) = Recording::new("edge-1");
    cluster.set("a", true, Duration::ZERO);
    cluster.set("b", true, Duration::ZERO);
    let (metrics, _task) = start(&cluster, provider);

    // Unhealthy for less than the grace, three times over.
    for _ in 0..3 {
        cluster.set("a", false, S);
        sleep(9 * S).await;
        cluster.set("a", true, Duration::ZERO);
        sleep(5 * S).await;
    }
    assert_eq!(
        drain(&mut calls),
        Vec::<String>::new(),
        "a blip costs nothing"
    );

    cluster.set("a", false, S);
    sleep(9 * S).await;
    assert!(drain(&mut calls).is_empty(), "not before the grace");
    sleep(2 * S).await;
    assert_eq!(drain(&mut calls), ["a"], "once the grace has passed");
    // Still dead, still listed: never replaced again while it stays so, not even after the
    // cooldown (the master keeps listing dead nodes).
    sleep(3600 * S).await;
    assert!(drain(&mut calls).is_empty());
    assert_eq!(metrics.with_label_values(&["recording", "ok"]).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_machine_was_removed_is_dropped_from_the_list() {
    let cluster = FakeCluster::new();
    let (provider, mut calls) = Recording::new("edge-1");
    provider
        .script
        .lock()
        .expect("script")
        .push_back(Ok(Replacement {
            new_instance: Some("i-new".into()),
            removed: Some("i-dead".into()),
        }));
    cluster.set("a", false, S);
    cluster.set("b", false, S);
    let _r = start(&cluster, provider);
    sleep(11 * S).await;
    let mut replaced = drain(&mut calls);
    replaced.sort();
    assert_eq!(replaced, ["a", "b"]);
    // The first replacement removed a machine, the second (scripted default) did not.
    let forgotten = cluster.forgotten.lock().expect("forgotten").clone();
    assert_eq!(forgotten.len(), 1, "{forgotten:?}");
    let listed: Vec<String> = cluster.nodes().into_iter().map(|n| n.id).collect();
    assert!(!listed.contains(&forgotten[0]), "{listed:?}");
    assert_eq!(
        listed.len(),
        1,
        "the node whose machine stays is still listed"
    );
}

#[tokio::test(start_paused = true)]
async fn the_cooldown_holds_back_a_second_replacement_of_the_same_node() {
    let cluster = FakeCluster::new();
    let (provider, mut calls) = Recording::new("edge-1");
    cluster.set("a", false, S);
    let _r = start(&cluster, provider);
    sleep(11 * S).await;
    assert_eq!(drain(&mut calls), ["a"]);

    // It comes back (same id, e.g. a static node rebooted) and dies again within the cooldown.
    cluster.set("a", true, Duration::ZERO);
    sleep(60 * S).await;
    cluster.set("a", false, S);
    sleep(100 * S).await;
    assert!(drain(&mut calls).is_empty(), "held back by the cooldown");
    // The cooldown (300 s from the first call, at t=10 s) ends at t=310 s; now t=171 s.
    sleep(138 * S).await;
    assert!(drain(&mut calls).is_empty(), "t=309 s");
    sleep(2 * S).await;
    assert_eq!(drain(&mut calls), ["a"], "allowed after the cooldown");
}

#[tokio::test(start_paused = true)]
async fn a_failed_replacement_is_retried_after_the_cooldown_not_before() {
    let cluster = FakeCluster::new();
    let (provider, mut calls) = Recording::new("edge-1");
    provider
        .script
        .lock()
        .expect("script")
        .push_back(Err(ProviderError::Config {
            provider: "recording",
            message: "boom".into(),
        }));
    cluster.set("a", false, S);
    let (metrics, _task) = start(&cluster, provider);
    sleep(11 * S).await;
    assert_eq!(drain(&mut calls), ["a"]);
    assert_eq!(metrics.with_label_values(&["recording", "error"]).get(), 1);
    sleep(298 * S).await;
    assert!(drain(&mut calls).is_empty(), "not within the cooldown");
    sleep(2 * S).await;
    assert_eq!(drain(&mut calls), ["a"], "retried after it");
    assert_eq!(metrics.with_label_values(&["recording", "ok"]).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn waits_for_the_lock_and_skips_nodes_handled_by_another_edge() {
    let cluster = FakeCluster::new();
    let (provider, mut calls) = Recording::new("edge-1");
    cluster.lock_held_elsewhere.store(true, Ordering::SeqCst);
    // Another edge has marked b as handled.
    cluster
        .markers
        .lock()
        .expect("markers")
        .insert("b".into(), Instant::now() + 300 * S);
    cluster.set("a", false, S);
    cluster.set("b", false, S);
    let _r = start(&cluster, provider);
    sleep(60 * S).await;
    assert!(drain(&mut calls).is_empty(), "no call without the lock");
    cluster.lock_held_elsewhere.store(false, Ordering::SeqCst);
    sleep(6 * S).await;
    assert_eq!(
        drain(&mut calls),
        ["a"],
        "a retried once the lock was free; b not"
    );
    sleep(1000 * S).await;
    assert!(drain(&mut calls).is_empty());
}

#[tokio::test(start_paused = true)]
async fn nodes_dead_for_longer_than_the_horizon_or_of_unknown_age_are_left_alone() {
    let cluster = FakeCluster::new();
    let (provider, mut calls) = Recording::new("edge-1");
    cluster.set("old", false, 3601 * S);
    cluster.set("unknown", false, S);
    cluster
        .nodes
        .lock()
        .expect("nodes")
        .iter_mut()
        .filter(|n| n.id == "unknown")
        .for_each(|n| n.last_heartbeat_ms = None);
    let _r = start(&cluster, provider);
    sleep(600 * S).await;
    assert!(drain(&mut calls).is_empty());
}

/// A node that heartbeats every 50 ms until the task is aborted.
fn heartbeat(
    client: shadow_common::client::MasterClient,
    id: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = client.heartbeat(id, &Heartbeat::default()).await;
            sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test]
async fn of_two_edges_on_a_real_master_exactly_one_replaces_the_dead_node() {
    let m = master::spawn(MasterOptions {
        heartbeat_interval: Duration::from_millis(100),
        ..MasterOptions::default()
    })
    .await;
    for id in ["node-live", "node-dead"] {
        m.client
            .register_node(&NodeRegistration {
                id: id.into(),
                address: "127.0.0.1:7071".into(),
                capacity: 10,
                volume_kinds: None,
            })
            .await
            .expect("register");
    }
    let live = heartbeat(m.client.clone(), "node-live");
    let dying = heartbeat(m.client.clone(), "node-dead");

    // Follow the master's events from here on, to see who took the lock and the marker.
    let first = m
        .client
        .watch(None, 0, Duration::ZERO)
        .await
        .expect("watch");
    let (mut epoch, mut since) = (first.epoch, first.revision);

    let (tx, mut calls) = mpsc::unbounded_channel();
    let config = ReplacerConfig {
        grace: Duration::from_millis(300),
        cooldown: Duration::from_secs(60),
        max_dead: Duration::from_secs(3600),
        lock_ttl: Duration::from_secs(2),
        retry: Duration::from_millis(50),
    };
    let mut tasks = vec![];
    for edge in ["edge-1", "edge-2"] {
        let follower = Follower::spawn(m.client.clone(), std::future::pending());
        follower.synced().await;
        let r = Replacer::new(
            Recording::with_sender(edge, tx.clone()),
            m.client.clone(),
            follower,
            edge,
            config,
        );
        tasks.push(r.spawn(std::future::pending()));
    }
    dying.abort();

    // Wait until one edge has put the node's marker, and the other has then taken the lock
    // (after the first released it) and let it go: both have decided.
    let mark = marker("node-dead");
    let mut marked_by: Option<String> = None;
    let mut lock_by_other = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    'outer: loop {
        assert!(
            Instant::now() < deadline,
            "the edges did not both decide in 30 s"
        );
        let resp = m
            .client
            .watch(Some(&epoch), since, Duration::from_secs(5))
            .await
            .expect("watch");
        assert!(!resp.reset, "the test fell behind the master's events");
        (epoch, since) = (resp.epoch, resp.revision);
        for ev in resp.events {
            match ev {
                WatchEvent::LeasePut { lease } if lease.task_id == mark => {
                    assert!(marked_by.is_none(), "the marker was put twice");
                    marked_by = Some(lease.node);
                }
                WatchEvent::LeasePut { lease }
                    if lease.task_id == LOCK
                        && marked_by.as_ref().is_some_and(|by| *by != lease.node) =>
                {
                    lock_by_other = true;
                }
                WatchEvent::LeaseReleased { task_id, .. } if task_id == LOCK && lock_by_other => {
                    break 'outer;
                }
                _ => {}
            }
        }
    }

    let (edge, node) = calls.try_recv().expect("one provider call");
    assert_eq!(node, "node-dead");
    assert_eq!(
        Some(&edge),
        marked_by.as_ref(),
        "the edge that put the marker replaced it"
    );
    assert!(
        calls.try_recv().is_err(),
        "exactly one provider call in total"
    );
    let leases = m.client.list_leases().await.expect("leases");
    assert!(
        leases.iter().all(|l| l.task_id != LOCK),
        "the lock was released: {leases:?}"
    );
    assert!(
        leases.iter().any(|l| l.task_id == mark),
        "the marker stays for the cooldown"
    );

    live.abort();
    for t in tasks {
        t.abort();
    }
}
