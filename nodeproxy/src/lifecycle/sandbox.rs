//! Start environments made ahead. Making a container's network namespace and publishing its
//! port is the largest part of a cold start, and it can be paid before the request comes: the
//! node keeps a few sandboxes ready, each a container of a tiny process (`shadow-pause`) holding
//! a fresh network namespace on the app network with port 8000 published on 127.0.0.1. A cold
//! start takes one and starts the app's container into it (`NetworkMode: container:<sandbox>`);
//! the pool refills in the background. A sandbox serves one app run and is removed with it, so
//! apps never share a network namespace.
//!
//! The sandbox's image is made by the node itself, `FROM scratch` with the static
//! `shadow-pause` binary shipped with Shadow (`SHADOW_PAUSE_BINARY`): no registry. Without the
//! binary, or with `SHADOW_SANDBOX_POOL=0`, cold starts make their own namespace as before.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use shadow_common::backoff::Backoff;
use tokio::{sync::Notify, task::JoinHandle};

use super::start::LABEL_NODE;
use crate::{
    config::NodeConfig,
    runtime::{ContainerRuntime, ContainerSpec, RuntimeError, Sandbox, APP_PORT},
};

/// Marks a sandbox (besides the node's label, so every clean-up of the node removes it too).
pub const LABEL_SANDBOX: &str = "shadow.sandbox";

/// The sandbox image, one per Shadow version.
pub fn image_tag() -> String {
    format!("shadow/pause:{}", env!("CARGO_PKG_VERSION"))
}

pub struct SandboxPool {
    runtime: Arc<dyn ContainerRuntime>,
    node_id: String,
    network: String,
    size: usize,
    ready: Mutex<Vec<Sandbox>>,
    /// Woken when a sandbox was taken, or the pool closes.
    wanted: Notify,
    closed: AtomicBool,
    seq: AtomicU64,
    refill: Mutex<Option<JoinHandle<()>>>,
    metrics: crate::metrics::Metrics,
}

impl SandboxPool {
    /// A pool that never has a sandbox: cold starts make their own namespace.
    pub fn off(runtime: Arc<dyn ContainerRuntime>, metrics: crate::metrics::Metrics) -> Arc<Self> {
        Arc::new(Self::new(runtime, metrics, "", "", 0))
    }

    fn new(
        runtime: Arc<dyn ContainerRuntime>,
        metrics: crate::metrics::Metrics,
        node_id: &str,
        network: &str,
        size: usize,
    ) -> Self {
        Self {
            metrics,
            runtime,
            node_id: node_id.to_owned(),
            network: network.to_owned(),
            size,
            ready: Mutex::new(Vec::new()),
            wanted: Notify::new(),
            closed: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            refill: Mutex::new(None),
        }
    }

    /// Makes the sandbox image if needed and starts filling the pool; a pool that cannot be
    /// had (no binary, an image that does not build) is off, with the reason in the log.
    pub async fn start(
        runtime: Arc<dyn ContainerRuntime>,
        config: &NodeConfig,
        metrics: crate::metrics::Metrics,
    ) -> Arc<Self> {
        if config.sandbox_pool == 0 {
            return Self::off(runtime, metrics);
        }
        let binary = config.pause_binary();
        if let Err(e) = ensure_image(&*runtime, &binary).await {
            tracing::warn!(error = %e, "no sandbox pool: cold starts make their own network namespace (set SHADOW_PAUSE_BINARY to the static shadow-pause, or SHADOW_SANDBOX_POOL=0 to silence this)");
            return Self::off(runtime, metrics);
        }
        let pool = Arc::new(Self::new(
            runtime,
            metrics,
            &config.node_id,
            &config.app_network,
            config.sandbox_pool,
        ));
        let handle = tokio::spawn(pool.clone().refill_forever());
        *pool.refill.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        tracing::info!(size = config.sandbox_pool, "sandbox pool on");
        pool
    }

    /// A ready sandbox for an app listening on `port`, if the pool has one (sandboxes publish
    /// 8000, the default; an app on another port starts as before).
    pub fn take(&self, port: u16) -> Option<Sandbox> {
        if port != APP_PORT || self.size == 0 {
            return None;
        }
        let taken = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            let taken = ready.pop();
            self.metrics.sandboxes_ready(ready.len());
            taken
        };
        self.wanted.notify_one();
        taken
    }

    /// Removes a sandbox whose app run is over (or never began).
    pub async fn discard(&self, sandbox: &Sandbox) {
        if let Err(e) = self
            .runtime
            .stop_and_remove(&sandbox.id, Duration::ZERO)
            .await
        {
            tracing::warn!(sandbox = %sandbox.id, error = %e, "cannot remove a used sandbox");
        }
    }

    /// Stops refilling and removes the ready sandboxes (the node is stopping).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wanted.notify_one();
        let refill = self.refill.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = refill {
            // It finishes a sandbox it was making, and removes it.
            let _ = handle.await;
        }
        let ready = std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()));
        self.metrics.sandboxes_ready(0);
        for s in &ready {
            self.discard(s).await;
        }
    }

    /// How many sandboxes are ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn refill_forever(self: Arc<Self>) {
        let mut failures = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        while !self.closed.load(Ordering::SeqCst) {
            if self.ready() >= self.size {
                self.wanted.notified().await;
                continue;
            }
            match self.make().await {
                Ok(s) => {
                    failures.reset();
                    let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                    if !self.closed.load(Ordering::SeqCst) {
                        ready.push(s);
                        self.metrics.sandboxes_ready(ready.len());
                        continue;
                    }
                    drop(ready);
                    self.discard(&s).await;
                }
                Err(e) => {
                    let wait = failures.next_delay();
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "cannot make a sandbox; cold starts make their own meanwhile");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.wanted.notified() => {}
                    }
                }
            }
        }
    }

    async fn make(&self) -> Result<Sandbox, RuntimeError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut spec = ContainerSpec::new(
            format!(
                "shadow-sandbox-{}-{}-{seq}",
                self.node_id,
                std::process::id()
            ),
            image_tag(),
        );
        spec.labels.insert(LABEL_NODE.into(), self.node_id.clone());
        spec.labels.insert(LABEL_SANDBOX.into(), "1".into());
        spec.network = Some(self.network.clone());
        // The pause process needs almost nothing; the app's limits are on its own container.
        spec.memory_mb = Some(16);
        spec.pids = Some(4);
        spec.cpus = Some(0.1);
        spec.read_only = true;
        spec.user = Some("65534:65534".into());
        let c = self.runtime.create_and_start(&spec).await?;
        Ok(Sandbox {
            id: c.id,
            host_addr: c.host_addr,
        })
    }
}

/// Makes the sandbox image from `binary` unless the node has it.
async fn ensure_image(runtime: &dyn ContainerRuntime, binary: &Path) -> Result<(), String> {
    let bytes = tokio::fs::read(binary)
        .await
        .map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    let context = build_context(&bytes).map_err(|e| format!("cannot pack the image: {e}"))?;
    runtime
        .ensure_built(&image_tag(), context)
        .await
        .map_err(|e| e.to_string())
}

/// A build context: the Dockerfile and the binary.
fn build_context(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let dockerfile = b"FROM scratch\nCOPY shadow-pause /pause\nENTRYPOINT [\"/pause\"]\n";
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", &dockerfile[..], 0o644),
        ("shadow-pause", binary, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data)?;
    }
    tar.into_inner()
}
