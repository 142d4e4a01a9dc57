//! The proxies' lean HTTP/1.1 loop against hyper's server: the same handler served both ways,
//! the same raw requests over real sockets, and the same bytes back (the `Date` value aside).
//! Also what only a live connection shows: the header timeout, a client that leaves, a stop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use shadow_common::proxy::{
    empty, full, serve_with, ClientLimits, ProxyBody, RequestBody, ServeOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Frames handed out one at a time, with a pending poll before each (so the writer must flush
/// and wait), and a length it claims or not.
struct Frames {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    exact: Option<u64>,
    ready: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.frames.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn frames(parts: &[&'static str], exact: Option<u64>) -> ProxyBody {
    let frames = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    ProxyBody::new(Frames {
        frames,
        exact,
        ready: false,
    })
}

/// One answer per path, each a case of hyper's framing rules.
async fn answer(req: Request<RequestBody>) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let mut response = match path.as_str() {
        "/echo" => {
            let got = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::new(full(got))
        }
        "/len" => Response::new(full("hello")),
        "/empty" => Response::new(empty()),
        "/stream" => Response::new(frames(&["one ", "two ", "three"], None)),
        "/stream-len" => Response::new(frames(&["ab", "cd"], Some(4))),
        "/stream-cl-header" => {
            let mut r = Response::new(frames(&["abc", "def"], None));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
            r
        }
        "/gzip" => {
            let mut r = Response::new(frames(&["zz"], None));
            r.headers_mut()
                .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
            r
        }
        "/short" => Response::new(frames(&["abc"], Some(10))),
        "/broken" => {
            let body = Frames {
                frames: VecDeque::from([
                    Ok(Frame::data(Bytes::from_static(b"part"))),
                    Err("the upstream went away".into()),
                ]),
                exact: None,
                ready: false,
            };
            Response::new(ProxyBody::new(body))
        }
        "/no-content" => {
            let mut r = Response::new(full("ignored"));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        "/not-modified" => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            r
        }
        "/close" => {
            let mut r = Response::new(full("bye"));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        "/http10" => {
            let mut r = Response::new(full("old"));
            *r.version_mut() = Version::HTTP_10;
            r
        }
        "/fields" => {
            let mut r = Response::new(full("f"));
            let h = r.headers_mut();
            h.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
            h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
            h.append(header::CONNECTION, HeaderValue::from_static("x-hop"));
            h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
            h.insert(
                header::DATE,
                HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
            );
            *r.status_mut() = StatusCode::from_u16(599).expect("status");
            r
        }
        _ => {
            let mut r = Response::new(full(format!("{} {}", parts.method, path)));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    response
        .headers_mut()
        .insert("x-served", HeaderValue::from_static("yes"));
    response
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

async fn start(hyper_only: bool, limits: Option<Arc<ClientLimits>>) -> Server {
    start_with(hyper_only, limits, |req, _peer| answer(req)).await
}

async fn start_with<H, F>(hyper_only: bool, limits: Option<Arc<ClientLimits>>, handler: H) -> Server
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let options = ServeOptions {
        limits,
        hyper_only,
        drain: Some(Duration::from_secs(5)),
        ..ServeOptions::default()
    };
    tokio::spawn(serve_with(
        listener,
        handler,
        async move {
            let _ = stop_rx.await;
        },
        options,
    ));
    Server {
        addr,
        stop: Some(stop_tx),
    }
}

/// Writes `raw` and reads until the server closes (bounded), with every `Date` value masked.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server kept open the connection of {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })
        .expect("read");
    mask_dates(&String::from_utf8_lossy(&out))
}

fn mask_dates(text: &str) -> String {
    text.split("\r\n")
        .map(|line| {
            if line.starts_with("date: ") && !line.contains("2026 00:00:00") {
                "date: <now>"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t.test\r\n\r\n")
}

#[tokio::test]
async fn the_lean_loop_answers_byte_for_byte_as_hyper_does() {
    let lean = start(false, None).await;
    let hyper = start(true, None).await;
    let paths = [
        "/len",
        "/empty",
        "/stream",
        "/stream-len",
        "/stream-cl-header",
        "/no-content",
        "/not-modified",
        "/http10",
        "/fields",
        "/missing?q=1",
    ];
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Each path on its own, GET and HEAD, ended by the client's `Connection: close`.
    for path in paths {
        for method in ["GET", "HEAD"] {
            cases.push(
                format!("{method} {path} HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n")
                    .into_bytes(),
            );
        }
    }
    // All of them pipelined on one connection, then a close.
    let mut all = String::new();
    for path in paths {
        all.push_str(&get(path));
    }
    all.push_str("GET /close HTTP/1.1\r\nHost: t.test\r\n\r\nGET /never HTTP/1.1\r\n\r\n");
    cases.push(all.into_bytes());
    // Bodies and the odd requests hyper takes over, between requests the loop serves.
    cases.push(
        format!(
            "{}POST /echo HTTP/1.1\r\nHost: t.test\r\nContent-Length: 5\r\n\r\nhello{}{}",
            get("/len"),
            get("/stream"),
            "GET /len HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    );
    cases.push(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /len HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec());
    cases.push(b"GET /len HTTP/1.0\r\n\r\n".to_vec());
    cases.push(b"GET /len HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /len HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec());
    cases.push(b"GET /len HTTP/1.1\r\nTE: trailers\r\nConnection: close\r\n\r\n".to_vec());
    cases
        .push(b"DELETE /empty HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec());
    // Malformed heads: hyper's own answers.
    cases.push(b"GET /len HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec());
    cases.push(b"GET /\x7f HTTP/1.1\r\n\r\n".to_vec());
    cases.push(b"GET /len HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec());
    cases.push(
        format!(
            "GET /{} HTTP/1.1\r\nConnection: close\r\n\r\n",
            "a".repeat(20_000)
        )
        .into_bytes(),
    );
    cases.push(
        format!(
            "GET /len HTTP/1.1\r\n{}\r\n",
            (0..120)
                .map(|i| format!("x-{i}: v\r\n"))
                .collect::<String>()
        )
        .into_bytes(),
    );
    // Answers that break: cut short of their length, or failing midway.
    cases.push(b"GET /short HTTP/1.1\r\n\r\n".to_vec());
    cases.push(b"GET /broken HTTP/1.1\r\n\r\n".to_vec());

    for raw in &cases {
        let ours = exchange(lean.addr, raw).await;
        let theirs = exchange(hyper.addr, raw).await;
        assert_eq!(
            ours,
            theirs,
            "for {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        );
        assert!(
            !ours.is_empty() || raw.starts_with(b"GET /short") || raw.starts_with(b"GET /broken"),
            "no answer to {:?}",
            String::from_utf8_lossy(raw)
        );
    }

    // A coding other than chunked: `chunked` is added last. (hyper 1.12 then also appends
    // ", chunked" to the next joined field, `Connection`; the lean loop does not copy that.)
    let ours = exchange(
        lean.addr,
        b"GET /gzip HTTP/1.1\r\nHost: t.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        ours,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nx-served: yes\r\n\
         connection: close\r\ndate: <now>\r\n\r\n2\r\nzz\r\n0\r\n\r\n"
    );
    drop((lean.stop, hyper.stop));
}

#[tokio::test]
async fn a_stalled_head_and_an_idle_connection_are_closed_after_the_header_timeout() {
    let limits = ClientLimits::new(Duration::from_millis(300), 100, 100);
    let server = start(false, Some(limits)).await;
    // Half a head, then nothing: closed, unanswered.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"GET /len HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("closed within the timeout")
        .expect("read");
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));

    // Answered, then idle: closed too, and a slow dribble does not keep it open past its time.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(get("/len").as_bytes()).await.expect("write");
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.expect("answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("an idle connection is closed")
        .expect("read");

    // A head dribbled a byte per 100 ms for 4 s: the timeout counts from the head's start, not
    // from its last byte, so the server closes the connection long before the dribble ends.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut closed = false;
    for byte in b"GET /len HTTP/1.1\r\nHost: t.test\r\nX-Slow: aaaaaaaaaaaaa" {
        if s.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut answer = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut answer)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!(
                "a dribbled head was answered: {:?}",
                String::from_utf8_lossy(&answer[..n])
            ),
        }
    }
    assert!(closed, "the dribbled head kept its connection for 4 s");
}

/// Sends on drop: tells when the server dropped the handler's work.
struct Dropped(Option<oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// One frame, then never another, holding what it was given until dropped.
struct Forever<T> {
    sent: bool,
    _held: T,
}

impl<T: Unpin> Body for Forever<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

#[tokio::test]
async fn a_client_that_leaves_ends_the_handler_and_the_stream_it_was_sent() {
    for hyper_only in [false, true] {
        let slot: Arc<Mutex<Option<oneshot::Sender<()>>>> = Arc::default();
        let taken = slot.clone();
        let server = start_with(hyper_only, None, move |req, _| {
            let guard = Dropped(taken.lock().expect("slot").take());
            async move {
                if req.uri().path() == "/hang" {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    unreachable!();
                }
                Response::new(ProxyBody::new(Forever {
                    sent: false,
                    _held: guard,
                }))
            }
        })
        .await;
        for path in ["/hang", "/stream"] {
            let (tx, rx) = oneshot::channel();
            *slot.lock().expect("slot") = Some(tx);
            let mut s = TcpStream::connect(server.addr).await.expect("connect");
            s.write_all(get(path).as_bytes()).await.expect("write");
            if path == "/stream" {
                let mut first = [0u8; 12];
                s.read_exact(&mut first).await.expect("answer head");
                assert_eq!(&first, b"HTTP/1.1 200");
            }
            drop(s);
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .unwrap_or_else(|_| {
                    panic!("{path}: still running after the client left (hyper_only {hyper_only})")
                })
                .expect("the guard was dropped, not leaked");
        }
    }
}

#[tokio::test]
async fn a_stop_closes_idle_connections_and_lets_a_busy_one_finish_with_close() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut server = start_with(false, None, move |req, _| {
        let wait = if req.uri().path() == "/slow" {
            release.lock().expect("release").take()
        } else {
            None
        };
        let started = started_tx.clone();
        async move {
            if let Some(wait) = wait {
                let _ = started.send(());
                let _ = wait.await;
            }
            Response::new(full("done"))
        }
    })
    .await;
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(get("/len").as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.expect("answer");
    let mut busy = TcpStream::connect(server.addr).await.expect("connect");
    busy.write_all(get("/slow").as_bytes())
        .await
        .expect("write");
    started_rx.recv().await.expect("the slow request started");

    drop(server.stop.take());
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed at the stop")
        .expect("read");
    let _ = release_tx.send(());
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut answer))
        .await
        .expect("the busy connection closes after its answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ndone"), "{answer}");
}
