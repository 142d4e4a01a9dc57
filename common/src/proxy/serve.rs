//! The accept loop both proxies serve their handler with: HTTP/1.1 (and HTTP/2 where asked),
//! upgrades enabled, the peer's address passed to the handler, client bounds where asked, and a
//! graceful stop. Bodiless HTTP/1.1 requests are served by the lean loop in `h1`; hyper's server
//! takes a connection from the first request the loop does not serve.
//!
//! On shutdown it stops accepting at once, asks every open connection to finish its current
//! request and close (hyper's graceful shutdown: idle keep-alive connections close immediately),
//! and waits for them at most the drain timeout before dropping the rest. Tunnels that already
//! upgraded are not tracked here: they run in their own tasks (see `upgrade`) and end when either
//! side closes, or, on worker threads, when the workers stop after the drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::h1::{self, Prefixed, Served};
use super::{ProxyBody, RequestBody, Workers};

/// How long [`serve`] waits for open connections after shutdown: 10 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed `accept` (out of file descriptors, say) is retried after this pause rather than in a
/// hot loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How one connection is served.
#[derive(Clone, Copy)]
struct How {
    header_timeout: Duration,
    http2: bool,
    /// Serve bodiless HTTP/1.1 requests with the lean loop (`h1`) first.
    lean: bool,
}

/// An HTTP/2 connection is pinged this often; one that does not answer within the header
/// timeout is closed (the HTTP/2 side of "a client cannot hold a dead connection").
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// hyper's own default: a request head must arrive within 30 s.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A client that connects and never finishes its TLS handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How [`serve_with`] serves: TLS or not, on worker threads or not, how long to drain.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Terminate TLS with this acceptor (each handshake in its connection's task).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Run connections on these worker threads; `None` runs them on the caller's runtime.
    pub workers: Option<Arc<Workers>>,
    /// How long open connections get after shutdown; `None` is [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain: Option<Duration>,
    /// Bounds on what clients may hold (a public listener); `None`: hyper's 30 s header
    /// timeout and no connection caps (a listener only trusted peers reach).
    pub limits: Option<Arc<ClientLimits>>,
    /// Also speak HTTP/2 (ALPN `h2` on TLS, prior knowledge in the clear); HTTP/1.1 only if
    /// false (a node, which only edges talk to).
    pub http2: bool,
    /// Serve every request with hyper's server, the lean HTTP/1.1 loop for bodiless requests
    /// off (to compare the two; the loop is on by default).
    pub hyper_only: bool,
}

/// Bounds on what clients may hold open, shared by the listeners of one program.
#[derive(Debug)]
pub struct ClientLimits {
    /// A connection that does not send a whole request head within this is closed (also an idle
    /// keep-alive connection).
    pub header_timeout: Duration,
    /// Open connections per client IP address; more are answered 429 and closed.
    pub per_ip: usize,
    /// Open connections in all; more are answered 503 and closed.
    pub total: usize,
    /// A std mutex: held only to bump a counter, never across an await.
    open: Mutex<HashMap<IpAddr, usize>>,
    open_total: AtomicUsize,
    /// Connections refused for the per-IP cap, for metrics.
    pub refused_per_ip: AtomicU64,
    /// Connections refused for the total cap, for metrics.
    pub refused_total: AtomicU64,
}

impl ClientLimits {
    pub fn new(header_timeout: Duration, per_ip: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            header_timeout,
            per_ip,
            total,
            open: Mutex::new(HashMap::new()),
            open_total: AtomicUsize::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open_total.load(Ordering::Relaxed)
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, StatusCode> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.open_total.load(Ordering::Relaxed) >= self.total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        }
        let mine = open.entry(ip).or_insert(0);
        if *mine >= self.per_ip {
            self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(StatusCode::TOO_MANY_REQUESTS);
        }
        *mine += 1;
        self.open_total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; its count goes when it is dropped.
struct Permit {
    limits: Arc<ClientLimits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
        self.limits.open_total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a refused connection may take to hear its 429 or 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("tls", &self.tls.is_some())
            .field("workers", &self.workers.as_ref().map(|w| w.len()))
            .field("drain", &self.drain)
            .field("limits", &self.limits)
            .field("http2", &self.http2)
            .field("hyper_only", &self.hyper_only)
            .finish()
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains for
/// [`DEFAULT_DRAIN_TIMEOUT`]. See [`serve_with`].
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    serve_with(listener, handler, shutdown, ServeOptions::default()).await;
}

/// Serves `handler` on `listener` until `shutdown` completes.
///
/// Each connection is served by the lean loop (`h1`) and then, if a request needs it, by
/// hyper's server with upgrades enabled (HTTP/2 too where asked); the handler gets
/// every request with the peer's address and always answers (errors are responses too). The
/// accept loop runs here; each connection runs on the next of `options.workers` (or here).
/// After `shutdown`, no new connection is accepted and the open ones get the drain timeout to
/// finish; the function returns when they have, or when the timeout is over.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let ServeOptions {
        tls,
        workers,
        drain,
        limits,
        http2,
        hyper_only,
    } = options;
    let header_timeout = limits
        .as_ref()
        .map_or(DEFAULT_HEADER_TIMEOUT, |l| l.header_timeout);
    let drain = drain.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
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
                    let permit = match limits.as_ref().map(|l| l.admit(peer.ip())) {
                        None => None,
                        Some(Ok(permit)) => Some(permit),
                        Some(Err(status)) => {
                            connections.spawn(refuse(stream, peer, status, tls.clone()));
                            continue;
                        }
                    };
                    let accepted = Accepted {
                        peer,
                        handler: handler.clone(),
                        stop: stop_rx.clone(),
                        tls: tls.clone(),
                        header_timeout,
                        http2,
                        lean: !hyper_only,
                        permit,
                    };
                    match &workers {
                        None => {
                            connections.spawn(accepted.serve(stream));
                        }
                        // The stream leaves this runtime's reactor for the worker's: registered
                        // here, every read would wake this thread and hop to the worker.
                        Some(workers) => match stream.into_std() {
                            Ok(stream) => {
                                connections.spawn_on(
                                    async move {
                                        match TcpStream::from_std(stream) {
                                            Ok(stream) => accepted.serve(stream).await,
                                            Err(error) => debug!(%peer, %error, "a worker cannot take the connection"),
                                        }
                                    },
                                    workers.next(),
                                );
                            }
                            Err(error) => debug!(%peer, %error, "cannot hand the connection to a worker"),
                        },
                    }
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

/// An accepted connection and what serving it needs.
struct Accepted<H> {
    peer: SocketAddr,
    handler: Arc<H>,
    stop: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    http2: bool,
    lean: bool,
    /// Held while the connection is open (counted against the caps).
    permit: Option<Permit>,
}

/// Answers a connection over a cap with `status` (429 per client, 503 in all) and closes it,
/// within [`REFUSAL_TIMEOUT`].
async fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    status: StatusCode,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    debug!(%peer, %status, "connection over the cap");
    let handler = Arc::new(
        move |_req: Request<RequestBody>, _peer: SocketAddr| async move {
            let message = if status == StatusCode::TOO_MANY_REQUESTS {
                "Too many connections from your address; close some and retry."
            } else {
                "The server is at its connection limit; retry shortly."
            };
            let mut r = super::error_response(status, message);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        },
    );
    let (_stop_tx, stop) = watch::channel(false);
    let accepted = Accepted {
        peer,
        handler,
        stop,
        tls,
        header_timeout: REFUSAL_TIMEOUT,
        http2: true,
        lean: true,
        permit: None,
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, accepted.serve(stream)).await;
}

impl<H, F> Accepted<H>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    async fn serve(self, stream: TcpStream) {
        let Self {
            peer,
            handler,
            stop,
            tls,
            header_timeout,
            http2,
            lean,
            permit: _permit,
        } = self;
        let how = How {
            header_timeout,
            http2,
            lean,
        };
        match tls {
            None => serve_connection(stream, peer, handler, stop, how).await,
            Some(acceptor) => {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    // A TLS-ALPN-01 validation: the handshake (its certificate) was the answer.
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => {
                        debug!(%peer, "answered a TLS-ALPN-01 challenge");
                    }
                    Ok(Ok(tls)) => {
                        // HTTP/2 agreed in the handshake is hyper's from the first byte.
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let how = How {
                            lean: how.lean && !h2,
                            ..how
                        };
                        serve_connection(tls, peer, handler, stop, how).await
                    }
                    Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }
}

async fn serve_connection<S, H, F>(
    stream: S,
    peer: SocketAddr,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    how: How,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let stream = if how.lean {
        match h1::serve(stream, peer, &*handler, &stop, how.header_timeout).await {
            Served::Done => return,
            Served::Hyper(stream) => stream,
        }
    } else {
        Prefixed::new(bytes::BytesMut::new(), stream)
    };
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let mut response = handler(req.map(RequestBody::Hyper), peer).await;
            // hyper writes only the map (see `raw_fields`).
            if let Some(raw) = response.body_mut().take_fields() {
                raw.append_to(response.headers_mut());
            }
            Ok::<_, Infallible>(response)
        }
    });
    // One builder for both protocols: it tells HTTP/2 from HTTP/1.1 by the connection preface
    // (after ALPN `h2` on TLS, or prior knowledge in the clear).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A slow or idle client can't hold a connection open without sending a request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(how.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(how.header_timeout);
    if !how.http2 {
        builder = builder.http1_only();
    }
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
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
