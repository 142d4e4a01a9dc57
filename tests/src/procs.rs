//! The programs as real processes, for tests that must kill one with SIGKILL.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use tokio::sync::OnceCell;

use crate::master::TOKEN;

/// Builds the binaries (the three programs and the `shadow` CLI) once per test process and returns the directory holding them.
pub async fn binaries() -> PathBuf {
    static BUILT: OnceCell<PathBuf> = OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace root")
                .to_path_buf();
            let status = tokio::process::Command::new(env!("CARGO"))
                .current_dir(&root)
                .args([
                    "build",
                    "-p",
                    "shadow-master",
                    "-p",
                    "shadow-nodeproxy",
                    "-p",
                    "shadow-edgeproxy",
                    "-p",
                    "shadow-cli",
                    "--bins",
                ])
                .status()
                .await
                .expect("cargo runs");
            assert!(status.success(), "building the binaries failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map_or_else(|_| root.join("target"), PathBuf::from);
            target.join("debug")
        })
        .await
        .clone()
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// SIGKILL: no clean-up of any kind, like a machine that died.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `shadow-nodeproxy` as a process.
pub async fn spawn_node(
    master_url: &str,
    node_id: &str,
    data_dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> Proc {
    let addr = free_addr();
    let mut cmd = Command::new(binaries().await.join("shadow-nodeproxy"));
    cmd.env("SHADOW_API_TOKEN", TOKEN)
        .env("SHADOW_MASTER_URL", master_url)
        .env("SHADOW_NODE_ID", node_id)
        .env("SHADOW_NODE_LISTEN", addr.to_string())
        .env("SHADOW_DATA_DIR", data_dir)
        .env("SHADOW_HEARTBEAT_INTERVAL_MS", "100")
        // Most tests are about the stop path; those about the frozen tier turn it back on.
        .env("SHADOW_FROZEN_TIMEOUT_S", "0")
        .env("SHADOW_SANDBOX_POOL", "0")
        .env(
            "SHADOW_LOG",
            std::env::var("SHADOW_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start shadow-nodeproxy");
    Proc { child, addr }
}

/// Starts `shadow-edgeproxy` as a process; answers once its admin listener says it is healthy.
pub async fn spawn_edge(master_url: &str, extra_env: &[(&str, &str)]) -> Proc {
    let addr = free_addr();
    let admin = free_addr();
    let mut cmd = Command::new(binaries().await.join("shadow-edgeproxy"));
    cmd.env("SHADOW_API_TOKEN", TOKEN)
        .env("SHADOW_MASTER_URL", master_url)
        .env("SHADOW_EDGE_LISTEN", addr.to_string())
        .env("SHADOW_EDGE_ADMIN_LISTEN", admin.to_string())
        .env(
            "SHADOW_LOG",
            std::env::var("SHADOW_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start shadow-edgeproxy");
    let proc = Proc { child, addr };
    let client = crate::http::Client::new(admin);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if client
            .get("edge.invalid", "/healthz")
            .await
            .is_ok_and(|r| r.status == 200)
        {
            return proc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge did not become healthy within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Starts `shadow-master` as a process on `database_url` (PostgreSQL), with nodes expected to
/// heartbeat every `heartbeat_ms`; answers once it serves.
pub async fn spawn_master(database_url: &str, heartbeat_ms: u64) -> Proc {
    let addr = free_addr();
    let data = tempfile::tempdir().expect("dir").keep();
    let mut cmd = Command::new(binaries().await.join("shadow-master"));
    cmd.env("SHADOW_API_TOKEN", TOKEN)
        .env("SHADOW_DATABASE_URL", database_url)
        .env("SHADOW_MASTER_LISTEN", addr.to_string())
        .env("SHADOW_DATA_DIR", &data)
        .env("SHADOW_HEARTBEAT_INTERVAL_MS", heartbeat_ms.to_string())
        .env(
            "SHADOW_LOG",
            std::env::var("SHADOW_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    let child = cmd.spawn().expect("start shadow-master");
    let proc = Proc { child, addr };
    let client = crate::http::Client::new(addr);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if client
            .get("master.invalid", "/healthz")
            .await
            .is_ok_and(|r| r.status == 200)
        {
            return proc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the master did not serve within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
