//! The sandbox pool with real Docker: a cold start joins a network namespace made ahead, the
//! pool refills, no sandbox serves two apps, an app on another port starts as before, and no
//! sandbox outlives the node.

use std::time::Duration;

use serde_json::json;
use shadow_tests::{
    fixtures::{counter_task, domain, status_until},
    http::Client,
    image::{counter_image, pause_binary},
    master::{self, MasterOptions},
    node::{self, NodeHandle},
};
use tokio::time::Instant;

fn network_mode(container: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.NetworkMode}}", container])
        .output()
        .expect("docker inspect runs");
    assert!(out.status.success(), "docker inspect {container}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The network mode of each of the node's app containers.
async fn app_network_modes(n: &NodeHandle) -> Vec<String> {
    let apps = n.containers().await;
    apps.iter().map(|c| network_mode(&c.id)).collect()
}

/// The ids of the node's sandboxes (ready and in use), once its pool has `ready` ready ones
/// (its `/metrics`, within 30 s).
async fn sandboxes(n: &NodeHandle, ready: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("shadow_node_sandboxes_ready {ready}\n");
    loop {
        let metrics = Client::new(n.addr)
            .get("shadow.invalid", "/metrics")
            .await
            .expect("metrics");
        if metrics.body.contains(&want) {
            return n.sandboxes().await.into_iter().map(|c| c.id).collect();
        }
        assert!(
            Instant::now() < deadline,
            "the pool never had {ready} ready: {}",
            metrics.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cold_starts_join_sandboxes_made_ahead_one_app_run_each() {
    counter_image().await.expect("test image builds");
    let pause = pause_binary().await.expect("shadow-pause builds");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| {
        c.sandbox_pool = 1;
        c.pause_binary = Some(pause.clone());
    })
    .await;
    let c = Client::new(n.addr);
    let ready = sandboxes(&n, 1).await;
    assert_eq!(ready.len(), 1);

    let first = domain("sandboxed");
    let task = counter_task(&m, &first, "local", |_| {}).await;
    let r = c.post(&first, "/count", "").await.expect("request");
    assert_eq!((r.status, r.body.trim()), (200, "1"), "{r:?}");
    let app = n.containers().await;
    assert_eq!(app.len(), 1);
    assert_eq!(
        network_mode(&app[0].id),
        format!("container:{}", ready[0]),
        "the app joined the ready sandbox"
    );

    // The pool refills: the used sandbox and a new ready one.
    let now = sandboxes(&n, 1).await;
    assert_eq!(now.len(), 2, "{now:?}");
    let fresh: Vec<&String> = now.iter().filter(|id| !ready.contains(id)).collect();
    assert_eq!(fresh.len(), 1, "{now:?}");

    let second = domain("neighbour");
    counter_task(&m, &second, "local", |_| {}).await;
    let r = c.post(&second, "/count", "").await.expect("request");
    sandboxes(&n, 1).await;
    assert_eq!(r.status, 200, "{r:?}");
    let modes = app_network_modes(&n).await;
    assert!(
        modes.contains(&format!("container:{}", fresh[0])),
        "the second app has the new sandbox, not the first one's: {modes:?}"
    );

    // An app's sandbox goes with its run; its next start gets a new one.
    m.client.sleep_task(&task.id).await.expect("sleep");
    status_until(&m, &task.id, "the first app stopped", |s| {
        s.state == shadow_common::status::AppState::Idle
    })
    .await;
    let left: Vec<String> = n.sandboxes().await.into_iter().map(|c| c.id).collect();
    assert!(
        !left.contains(&ready[0]),
        "the used sandbox was removed: {left:?}"
    );
    let r = c.post(&first, "/count", "").await.expect("request");
    assert_eq!((r.status, r.body.trim()), (200, "2"), "{r:?}");

    // An app on another port than the sandboxes' starts with its own namespace.
    let other = domain("port");
    counter_task(&m, &other, "local", |s| s["port"] = json!(8081)).await;
    let r = c.get(&other, "/").await.expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    let modes = app_network_modes(&n).await;
    assert_eq!(
        modes
            .iter()
            .filter(|m| !m.starts_with("container:"))
            .count(),
        1,
        "{modes:?}"
    );

    let probe = n.runtime.clone();
    let id = n.id.clone();
    n.stop().await;
    use shadow_nodeproxy::runtime::ContainerRuntime;
    let left = probe.list_labelled("shadow.node", &id).await.expect("list");
    assert!(left.is_empty(), "the stopped node left {left:?}");
}
