//! The test harness: servers on 127.0.0.1:0, a raw hyper client, and bodies that stream from a
//! channel or from a repeating pattern (so 64 MiB cost no memory).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{header, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use shadow_common::proxy::{serve, ForwardContext, Forwarder, ProxyBody, RequestBody};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

pub type ClientBody = UnsyncBoxBody<Bytes, Infallible>;

pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for: {what}"),
    }
}

/// Serves `handler` on a fresh 127.0.0.1 port until the test ends.
pub async fn start<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(serve(listener, handler, std::future::pending()));
    addr
}

/// Sends on drop: the tests' activity token, to see exactly when the proxy lets go of it.
pub struct Released(Option<oneshot::Sender<()>>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A proxy to `upstream` (client scheme https, request id `req-42`); the first request carries
/// the returned receiver's activity token.
pub async fn start_proxy(upstream: SocketAddr) -> (SocketAddr, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    let token = Arc::new(Mutex::new(Some(Released(Some(tx)))));
    let forwarder = Forwarder::default();
    let addr = start(move |req, peer| {
        let forwarder = forwarder.clone();
        let mut ctx =
            ForwardContext::new(peer, Scheme::HTTPS, "req-42").passing_answer_fields_unread(&[]);
        if let Some(token) = token.lock().expect("token lock").take() {
            ctx = ctx.with_activity(token);
        }
        async move {
            match forwarder.forward(req, upstream, ctx).await {
                Ok(response) => response,
                Err(error) => error.to_response(),
            }
        }
    })
    .await;
    (addr, rx)
}

pub async fn send(addr: SocketAddr, req: Request<ClientBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender.send_request(req).await.expect("response")
}

pub fn get(path: &str) -> http::request::Builder {
    Request::get(path).header(header::HOST, "app.example")
}

pub fn no_body() -> ClientBody {
    Empty::new().boxed_unsync()
}

pub async fn text<B>(body: B) -> String
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

/// A body fed from a channel, chunk by chunk, ending when the sender is dropped.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

pub const MIB: u64 = 1024 * 1024;
pub const CHUNK: usize = 64 * 1024;
pub const PERIOD: usize = 251;

/// `total` bytes where byte `i` is `i % 251`, made of 64 KiB slices of one small buffer, so a
/// large body costs no memory.
pub struct PatternBody {
    pattern: Bytes,
    sent: u64,
    total: u64,
    exact_length: bool,
}

pub fn pattern() -> Bytes {
    (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

impl PatternBody {
    pub fn new(total: u64, exact_length: bool) -> Self {
        Self {
            pattern: pattern(),
            sent: 0,
            total,
            exact_length,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.total - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        let start = (self.sent % PERIOD as u64) as usize;
        let chunk = self.pattern.slice(start..start + len);
        self.sent += len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.total
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_length {
            SizeHint::with_exact(self.total - self.sent)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a body to its end, checking every byte against the pattern; returns the byte count.
pub async fn count_pattern<B>(mut body: B) -> u64
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let pattern = pattern();
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("body frame").into_data() else {
            continue;
        };
        for piece in data.chunks(CHUNK) {
            let start = (seen % PERIOD as u64) as usize;
            assert!(
                piece == &pattern[start..start + piece.len()],
                "corrupt bytes at offset {seen}"
            );
            seen += piece.len() as u64;
        }
    }
    seen
}
