//! The accept loop both proxies serve their handler with: HTTP/1.1, upgrades enabled, the peer's
//! address passed to the handler, and a graceful stop.
//!
//! On shutdown it stops accepting at once, asks every open connection to finish its current
//! request and close (hyper's graceful shutdown: idle keep-alive connections close immediately),
//! and waits for them at most the drain timeout before dropping the rest. Tunnels that already
//! upgraded are not tracked here: they run in their own tasks (see `upgrade`) and end when either
//! side closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::ProxyBody;

/// How long [`serve`] waits for open connections after shutdown: 10 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed `accept` (out of file descriptors, say) is retried after this pause rather than in a
/// hot loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A client that connects and never finishes its TLS handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` until `shutdown` completes, then drains for
/// [`DEFAULT_DRAIN_TIMEOUT`]. See [`serve_with_drain`].
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    serve_with_drain(listener, handler, shutdown, DEFAULT_DRAIN_TIMEOUT).await;
}

/// Serves `handler` on `listener` until `shutdown` completes.
///
/// Each connection is served by hyper's HTTP/1 server with upgrades enabled; the handler gets
/// every request with the peer's address and always answers (errors are responses too). After
/// `shutdown`, no new connection is accepted and the open ones get `drain` to finish; the
/// function returns when they have, or when `drain` is over.
pub async fn serve_with_drain<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    serve_inner(listener, None, handler, shutdown, drain).await;
}

/// Like [`serve`], over TLS: each connection's handshake runs in its own task (a slow client
/// never holds up the accept loop), then the connection is served as over plain TCP.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    serve_inner(
        listener,
        Some(acceptor),
        handler,
        shutdown,
        DEFAULT_DRAIN_TIMEOUT,
    )
    .await;
}

async fn serve_inner<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small writes (SSE events, WebSocket frames) must not wait for Nagle.
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%peer, %error, "could not set TCP_NODELAY");
                    }
                    let (handler, stop) = (handler.clone(), stop_rx.clone());
                    match tls.clone() {
                        None => connections.spawn(serve_connection(stream, peer, handler, stop)),
                        Some(acceptor) => connections.spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve_connection(tls, peer, handler, stop).await,
                                Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                                Err(_) => debug!(%peer, "TLS handshake timed out"),
                            }
                        }),
                    };
                }
                Err(error) => {
                    warn!(%error, "accepting a connection failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set doesn't grow with every one ever served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    drop(listener);
    // Receivers only wait for the change; nobody listening is fine.
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            ?drain,
            "connections still open after the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection<S, H, F>(
    stream: S,
    peer: SocketAddr,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req, peer).await) }
    });
    // The timer enables hyper's default 30 s header-read timeout: a slow or idle client can't
    // hold a connection open forever without sending a request.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        // The value only ever goes false -> true, so any change means "stop".
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Clients hang up mid-request all the time; this is not the server's problem.
        debug!(%peer, %error, "connection ended with an error");
    }
}
