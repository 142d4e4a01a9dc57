//! The frozen tier with real Docker: an idle app is paused rather than stopped, a request
//! thaws the same container with its data, a frozen app is stopped after its frozen timeout or
//! when a start needs its memory (least recently used first), and a stateful app's volume is
//! checkpointed at the freeze, so a node killed while the app is frozen loses nothing.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use shadow_common::status::{AppState, TaskStatus};
use shadow_tests::{
    fixtures::{counter_task, domain, open_websocket, status_until},
    http::Client,
    image::counter_image,
    master::{self, MasterOptions},
    node::{self, unique_id},
    procs, s3,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Whether Docker has the container paused.
fn paused(id: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Paused}}", id])
        .output()
        .expect("docker inspect runs");
    assert!(out.status.success(), "docker inspect {id}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

fn on_node(s: &TaskStatus) -> AppState {
    s.nodes.first().map_or(AppState::Idle, |n| n.state)
}

async fn count(c: &Client, d: &str) -> String {
    let r = c.post(d, "/count", "").await.expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    r.body.trim().to_owned()
}

#[tokio::test]
async fn an_idle_app_is_frozen_and_a_request_thaws_the_same_container_with_its_data() {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.frozen_timeout_s = 600).await;
    let d = domain("freeze");
    let task = counter_task(&m, &d, "local", |s| s["idle_timeout_s"] = json!(1)).await;
    let c = Client::new(n.addr);
    assert_eq!(count(&c, &d).await, "1");
    let running = n.containers().await;
    assert_eq!(running.len(), 1);

    status_until(&m, &task.id, "the idle app is frozen", |s| {
        on_node(s) == AppState::Frozen
    })
    .await;
    assert!(paused(&running[0].id), "Docker shows the container paused");
    // Frozen, it still counts as on the node, holding its place.
    assert_eq!(n.containers().await[0].id, running[0].id);

    assert_eq!(count(&c, &d).await, "2", "thawed, with the data it had");
    assert!(!paused(&running[0].id));
    assert_eq!(
        n.containers().await[0].id,
        running[0].id,
        "the same container"
    );
    let s = m.client.task_status(&task.id).await.expect("status");
    assert_eq!(
        s.nodes[0].cold_starts, 1,
        "a thaw is not a cold start: {s:?}"
    );
    assert_eq!(on_node(&s), AppState::Running);
    n.stop().await;
}

#[tokio::test]
async fn an_open_websocket_keeps_the_app_from_freezing() {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.frozen_timeout_s = 600).await;
    let d = domain("wsfreeze");
    let task = counter_task(&m, &d, "local", |s| s["idle_timeout_s"] = json!(1)).await;
    let mut ws = open_websocket(n.addr, &d).await;
    // Three idle timeouts with the socket open and silent: still running, never paused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = m.client.task_status(&task.id).await.expect("status");
    assert_eq!(on_node(&s), AppState::Running, "{s:?}");
    assert!(!paused(&n.containers().await[0].id));
    ws.send(Message::text("still there")).await.expect("send");
    let echoed = ws.next().await.expect("a reply").expect("ok");
    assert_eq!(echoed.into_text().expect("text").as_str(), "still there");
    // Closed, the app is idle and freezes.
    ws.close(None).await.expect("close");
    drop(ws);
    status_until(&m, &task.id, "frozen once the socket closed", |s| {
        on_node(s) == AppState::Frozen
    })
    .await;
    n.stop().await;
}

#[tokio::test]
async fn a_frozen_app_is_stopped_after_its_frozen_timeout_and_keeps_its_data() {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    // The node's default is off (see node::spawn): the task's own setting turns it on.
    let n = node::spawn(&m, |_| {}).await;
    let d = domain("thaw");
    let task = counter_task(&m, &d, "local", |s| {
        s["idle_timeout_s"] = json!(1);
        s["frozen_timeout_s"] = json!(2);
    })
    .await;
    let c = Client::new(n.addr);
    assert_eq!(count(&c, &d).await, "1");
    let first = n.containers().await[0].id.clone();
    let frozen = status_until(&m, &task.id, "frozen", |s| on_node(s) == AppState::Frozen).await;
    let stopped = status_until(&m, &task.id, "stopped after its frozen timeout", |s| {
        on_node(s) == AppState::Idle
    })
    .await;
    let held = stopped.nodes[0].since_ms - frozen.nodes[0].since_ms;
    assert!(
        held >= 2_000,
        "stopped {held} ms after it froze; its frozen_timeout_s is 2"
    );
    assert!(n.containers().await.is_empty());
    assert_eq!(count(&c, &d).await, "2", "a new container, the same data");
    assert_ne!(n.containers().await[0].id, first);
    // A stopping node sends its last figures: the frozen time is counted apart.
    n.stop().await;
    let rows = m
        .client
        .usage(Some(&task.id), None, None)
        .await
        .expect("usage");
    let frozen_s: f64 = rows.iter().map(|r| r.frozen_s).sum();
    let cold_starts: u64 = rows.iter().map(|r| r.cold_starts).sum();
    assert!(
        (2.0..30.0).contains(&frozen_s),
        "frozen for {frozen_s} s: {rows:?}"
    );
    assert_eq!(cold_starts, 2);
}

#[tokio::test]
async fn a_start_short_of_memory_stops_the_least_recently_used_frozen_app() {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| {
        c.frozen_timeout_s = 600;
        c.memory_budget_mb = 300;
    })
    .await;
    let c = Client::new(n.addr);
    let mut apps = vec![];
    for name in ["older", "newer", "third"] {
        let d = domain(name);
        let t = counter_task(&m, &d, "local", |s| {
            s["idle_timeout_s"] = json!(1);
            s["resources"] = json!({"memory_mb": 128});
        })
        .await;
        apps.push((d, t));
    }
    // Two apps fill the budget (256 of 300 MiB); both freeze, the older first.
    for (d, t) in &apps[..2] {
        assert_eq!(count(&c, d).await, "1");
        status_until(&m, &t.id, "frozen", |s| on_node(s) == AppState::Frozen).await;
    }
    assert_eq!(count(&c, &apps[2].0).await, "1", "the third app starts");
    let state = |i: usize| {
        let (m, id) = (&m, apps[i].1.id.clone());
        async move { on_node(&m.client.task_status(&id).await.expect("status")) }
    };
    assert_eq!(
        state(0).await,
        AppState::Idle,
        "the least recently used made room"
    );
    assert_eq!(state(1).await, AppState::Frozen, "the other stays frozen");
    assert_eq!(state(2).await, AppState::Running);
    assert_eq!(n.containers().await.len(), 2);
    // The evicted app lost nothing: it comes back with its count, and the other frozen app
    // makes room for it now.
    assert_eq!(count(&c, &apps[0].0).await, "2");
    assert_eq!(state(1).await, AppState::Idle);
    n.stop().await;
}

#[tokio::test]
async fn a_checkpoint_at_freeze_is_what_another_node_restores_after_the_first_is_killed() {
    counter_image().await.expect("test image builds");
    let (s3, _probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(MasterOptions {
        heartbeat_interval: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    // No periodic checkpoints: only the freeze saves the data before the kill.
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("SHADOW_CHECKPOINT_INTERVAL_S", "0".into()));
    env.push(("SHADOW_FROZEN_TIMEOUT_S", "600".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a_id = unique_id("frozen");
    let mut a = procs::spawn_node(&m.url, &a_id, &dir.path().join(&a_id), &env).await;
    let d = domain("ckpt");
    let t = counter_task(&m, &d, "s3", |s| s["idle_timeout_s"] = json!(1)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ca = Client::new(a.addr);
    // The process may still be registering.
    loop {
        match ca.post(&d, "/count", "").await {
            Ok(r) if r.status == 200 => break,
            other => assert!(Instant::now() < deadline, "A never served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&ca, &d).await, "2");
    assert_eq!(count(&ca, &d).await, "3");
    status_until(&m, &t.id, "frozen on A", |s| on_node(s) == AppState::Frozen).await;
    a.kill9();
    // The lease lapses (A renews no more); B then restores what the freeze saved.
    let deadline = Instant::now() + Duration::from_secs(30);
    while m
        .client
        .list_leases()
        .await
        .expect("leases")
        .iter()
        .any(|l| l.task_id == t.id)
    {
        assert!(Instant::now() < deadline, "A's lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = node::spawn(&m, |c| s3.configure(c)).await;
    assert_eq!(count(&Client::new(b.addr), &d).await, "4");
    b.stop().await;
    remove_containers_of(&a_id);
}

/// What the node's own clean-up does after a crash (the unit's `ExecStopPost`).
fn remove_containers_of(node: &str) {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=shadow.node={node}"),
        ])
        .output()
        .expect("docker ps");
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", id])
            .output();
    }
}
