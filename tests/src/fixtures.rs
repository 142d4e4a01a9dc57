//! Pieces the end-to-end tests share: the counter app registered as a task, domains no other test
//! uses, waiting until a stop has finished, and removing what a SIGKILLed node left in Docker.

use std::time::Duration;

use serde_json::{json, Value};
use shadow_common::{follower::Follower, task::Task};

use crate::{image::COUNTER_IMAGE, master::MasterHandle, node::unique_id};

/// A domain no other test uses.
pub fn domain(prefix: &str) -> String {
    format!("{}.test", unique_id(prefix))
}

/// Registers the counter app under `domain` on a `volume_kind` volume, with `tweak` applied to
/// its spec.
pub async fn counter_task(
    m: &MasterHandle,
    domain: &str,
    volume_kind: &str,
    tweak: impl FnOnce(&mut Value),
) -> Task {
    let mut spec = json!({
        "name": "counter",
        "domains": [domain],
        "image": COUNTER_IMAGE,
        "volume": {"kind": volume_kind},
        "start_timeout_s": 30,
    });
    tweak(&mut spec);
    m.client
        .create_task(&serde_json::from_value(spec).expect("a valid spec"))
        .await
        .expect("create task")
}

/// Waits on the master's watch (no polling) until the task's lease is released: the last step
/// of a stop, after the container is removed and the volume written back. Fails after 60 s.
pub async fn until_released(m: &MasterHandle, task: &str) {
    let f = Follower::spawn(m.client.clone(), std::future::pending());
    f.synced().await;
    tokio::time::timeout(
        Duration::from_secs(60),
        f.wait_until(|s| s.lease(task).is_none()),
    )
    .await
    .unwrap_or_else(|_| panic!("task {task}'s lease was not released within 60 s"));
}

/// Removes the containers of a node that was killed (nothing of it stopped them).
pub fn docker_rm_node(node_id: &str) {
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -aq --filter label=shadow.node={node_id} | xargs -r docker rm -f >/dev/null 2>&1"
        ))
        .status();
}

/// The task's status once `pred` holds. Nodes report statuses as they change and the master
/// has no feed of them, so this polls it, for 30 s at most.
pub async fn status_until(
    m: &MasterHandle,
    task: &str,
    what: &str,
    pred: impl Fn(&shadow_common::status::TaskStatus) -> bool,
) -> shadow_common::status::TaskStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = m.client.task_status(task).await.expect("status");
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 30 s; last status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket to the counter app's `/ws` at `domain`, through the proxy listening at `addr`,
/// after checking the proxy answered the upgrade with 101.
pub async fn open_websocket(
    addr: std::net::SocketAddr,
    domain: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("ws://{domain}/ws")
        .into_client_request()
        .expect("ws request");
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("upgrade through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}
