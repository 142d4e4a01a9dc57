//! A real node proxy, in-process, on a loopback socket, with the real Docker runtime.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use shadow_nodeproxy::{
    lifecycle::{sandbox::LABEL_SANDBOX, start::LABEL_NODE},
    runtime::{docker::DockerRuntime, ContainerInfo, ContainerRuntime},
    NodeConfig,
};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::master::{MasterHandle, TOKEN};

pub struct NodeHandle {
    pub id: String,
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub runtime: Arc<DockerRuntime>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), shadow_nodeproxy::RunError>>>,
}

/// A node id no other test uses, so tests can run side by side on one Docker.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Starts a node proxy attached to `master`, heartbeating every 100 ms, stopping idle apps
/// rather than freezing them unless `tweak` sets `frozen_timeout_s`.
pub async fn spawn(master: &MasterHandle, tweak: impl FnOnce(&mut NodeConfig)) -> NodeHandle {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = unique_id("node");
    let mut config = NodeConfig::new(id.clone(), master.url.clone(), dir.path().to_path_buf());
    config.api_token = Some(TOKEN.to_string());
    config.heartbeat_interval_ms = 100;
    config.stop_grace_s = 2;
    // Most tests are about the stop path; those about the frozen tier turn it back on. The
    // sandbox pool's tests turn it on with the static pause binary they build.
    config.frozen_timeout_s = 0;
    config.sandbox_pool = 0;
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let runtime = Arc::new(
        DockerRuntime::connect(None)
            .await
            .expect("Docker is running")
            .with_registry_auth(config.registry_auth_file.clone()),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(shadow_nodeproxy::run_with(
        config.clone(),
        listener,
        runtime.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let node = NodeHandle {
        id: config.node_id,
        addr,
        dir,
        runtime,
        stop: Some(tx),
        join: Some(join),
    };
    node.wait_healthy().await;
    node
}

impl NodeHandle {
    /// Waits until the node answers `/healthz` (it has synced with the master).
    pub async fn wait_healthy(&self) {
        let client = crate::http::Client::new(self.addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get("node.invalid", "/healthz").await {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This node's containers, in any state.
    /// The node's app containers, in any state (not its sandboxes).
    pub async fn containers(&self) -> Vec<ContainerInfo> {
        let mut all = self.everything().await;
        all.retain(|c| !c.labels.contains_key(LABEL_SANDBOX));
        all
    }

    /// The node's ready and used sandboxes.
    pub async fn sandboxes(&self) -> Vec<ContainerInfo> {
        let mut all = self.everything().await;
        all.retain(|c| c.labels.contains_key(LABEL_SANDBOX));
        all
    }

    /// Every container with the node's label.
    pub async fn everything(&self) -> Vec<ContainerInfo> {
        self.runtime
            .list_labelled(LABEL_NODE, &self.id)
            .await
            .expect("list containers")
    }

    /// Stops the node (which stops its apps) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.expect("node task").expect("node ran cleanly");
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // A test that failed half-way must not leave containers behind for the next run.
        let id = self.id.clone();
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label={LABEL_NODE}={id} | xargs -r docker rm -f >/dev/null 2>&1"
            ))
            .status();
    }
}
