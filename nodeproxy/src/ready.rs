//! Readiness: a started container is ready when it answered an HTTP request, not when its port
//! accepts connections (Docker's port proxy accepts before the app listens).

use std::{net::SocketAddr, time::Duration};

use http_body_util::Empty;
use hyper::{body::Bytes, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One probe: `GET path` (or `/`), ready if any HTTP response comes back — a 2xx/3xx when the
/// task names a health path.
pub async fn probe(addr: SocketAddr, path: Option<&str>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_once(addr, path))
        .await
        .unwrap_or(false)
}

async fn probe_once(addr: SocketAddr, path: Option<&str>) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let Ok(req) = Request::get(path.unwrap_or("/"))
        .header("host", "localhost")
        .header("user-agent", "shadow-nodeproxy-readiness")
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    match sender.send_request(req).await {
        Ok(resp) if path.is_some() => resp.status().is_success() || resp.status().is_redirection(),
        Ok(_) => true,
        Err(_) => false,
    }
}
