//! A real edge proxy, in-process, on a loopback socket.

use std::net::SocketAddr;

use shadow_edgeproxy::EdgeConfig;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::master::{MasterHandle, TOKEN};

pub struct EdgeHandle {
    pub addr: SocketAddr,
    /// The HTTPS address, when the config names certificates or a TLS listener.
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener: the edge's /healthz and /metrics.
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), shadow_edgeproxy::RunError>>>,
}

pub async fn spawn(master: &MasterHandle, tweak: impl FnOnce(&mut EdgeConfig)) -> EdgeHandle {
    let mut config = EdgeConfig::new(crate::node::unique_id("edge"), master.url.clone());
    config.api_token = Some(TOKEN.to_string());
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let tls = if config.tls_cert.is_empty() && config.tls_listen.is_none() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback"),
        )
    };
    let tls_addr = tls.as_ref().map(|l| l.local_addr().expect("addr"));
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let admin_addr = admin.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let listeners = shadow_edgeproxy::Listeners {
        http: listener,
        https: tls,
        admin,
    };
    let join = tokio::spawn(shadow_edgeproxy::run_listeners(config, listeners, async {
        let _ = rx.await;
    }));
    let edge = EdgeHandle {
        addr,
        tls_addr,
        admin_addr,
        stop: Some(tx),
        join: Some(join),
    };
    let client = crate::http::Client::new(admin_addr);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !client
        .get("edge.invalid", "/healthz")
        .await
        .is_ok_and(|r| r.status == 200)
    {
        // The edge answers /healthz once its first watch of the master came back.
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge did not become healthy within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    edge
}

impl EdgeHandle {
    pub fn client(&self) -> crate::http::Client {
        crate::http::Client::new(self.addr)
    }

    /// The edge's Prometheus text, from the admin listener.
    pub async fn metrics(&self) -> String {
        self.admin()
            .get("admin.invalid", "/metrics")
            .await
            .expect("the admin listener answers")
            .body
    }

    /// A client of the admin listener (health, metrics).
    pub fn admin(&self) -> crate::http::Client {
        crate::http::Client::new(self.admin_addr)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.expect("edge task").expect("edge ran cleanly");
        }
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
