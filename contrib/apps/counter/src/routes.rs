//! The HTTP routes.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the count, as `N\n` (text/plain) |
//! | `GET /count` | the count, as `N\n` |
//! | `POST /count`, `GET /count?inc` | adds one (durably), answers the new count as `N\n` |
//! | `POST /echo` | the request body streamed back as it arrives (same Content-Type) |
//! | `POST /upload` | reads the whole body, then answers its length as `N\n` |
//! | `GET /bytes?n=N` | N bytes, streamed in 64 KiB chunks; byte at offset `i` is `i % 251` |
//! | `GET /ws` | WebSocket echo of text and binary messages |
//! | `GET /sse?n=N` | `text/event-stream`: `data: 0\n\n` .. `data: N-1\n\n`, one per 100 ms; `n=0` (or no `n`): forever, one per second |
//! | `GET /headers` | the request headers as a JSON object, name → value (repeated names joined with `, `) |
//! | `GET /healthz` | 200 `ok`, or 503 when `HEALTHZ_FAIL=1` |
//! | `GET /connect?to=IP:PORT` | tries a TCP connection (2 s): `connected` or `failed: <why>` (a hostile tenant probing its neighbours) |
//! | `GET /threads?n=N` | starts N sleeping threads, answers how many started and why it stopped (a fork bomb under a pids limit) |
//! | `GET /hog?n=MIB` | allocates and touches N MiB, then answers (a memory hog under a memory limit) |
//! | `GET /spin?n=MS` | answers at once and works one CPU for N ms in the background (busy without requests) |
//! | `GET /whoami` | `uid=U gid=G` of the app's process |
//! | `GET /env?name=N` | the value of environment variable `N`, 404 when unset |
//! | `GET /write?path=P` | tries to create the file P: `ok` or `failed: <why>` (a read-only root) |
//! | `GET /set-cookies` | three `Set-Cookie` headers (`a`, `b`, `c`; `c` has an `Expires` with a comma) |
//!
//! Anything else is 404; a bad query is 400.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::counter::Counter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// What the handlers share.
pub struct State {
    pub counter: Counter,
    pub healthz_fail: bool,
}

/// Size of the chunks `/bytes` sends.
const CHUNK: u64 = 64 * 1024;

pub async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, format!("{}\n", state.counter.get().await)),
        (&Method::POST, "/count") => increment(&state).await,
        (&Method::GET, "/count") if param(&query, "inc").is_some() => increment(&state).await,
        (&Method::GET, "/count") => {
            text(StatusCode::OK, format!("{}\n", state.counter.get().await))
        }
        (&Method::POST, "/echo") => echo(req),
        (&Method::POST, "/upload") => upload(req).await,
        (&Method::GET, "/bytes") => bytes(&query),
        (&Method::GET, "/ws") => websocket(req),
        (&Method::GET, "/sse") => sse(&query),
        (&Method::GET, "/headers") => headers(&req),
        (&Method::GET, "/healthz") if state.healthz_fail => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "failing (HEALTHZ_FAIL=1)\n",
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/set-cookies") => set_cookies(),
        (&Method::GET, "/connect") => connect(&query).await,
        (&Method::GET, "/threads") => threads(&query),
        (&Method::GET, "/hog") => hog(&query),
        (&Method::GET, "/spin") => spin(&query),
        (&Method::GET, "/whoami") => whoami(),
        (&Method::GET, "/env") => match std::env::var(param(&query, "name").unwrap_or("")) {
            Ok(v) => text(StatusCode::OK, format!("{v}\n")),
            Err(_) => text(StatusCode::NOT_FOUND, "not set\n"),
        },
        (&Method::GET, "/write") => write(&query),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The value of `name` in a query string: `Some("")` for a bare `name`, `None` when absent.
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The numeric parameter `n`, or `default` when absent; the error says what is wrong.
fn param_n(query: &str, default: Option<u64>) -> Result<u64, String> {
    match (param(query, "n"), default) {
        (Some(v), _) => v
            .parse()
            .map_err(|_| format!("n={v:?} is not a non-negative integer\n")),
        (None, Some(default)) => Ok(default),
        (None, None) => Err("missing the query parameter n\n".to_owned()),
    }
}

async fn increment(state: &State) -> Response<Body> {
    match state.counter.increment().await {
        Ok(value) => text(StatusCode::OK, format!("{value}\n")),
        Err(e) => {
            crate::log_err(format_args!("cannot write the count: {e}"));
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the count: {e}\n"),
            )
        }
    }
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    // The request body is polled only as the response body is written: nothing is buffered whole.
    let mut response = Response::new(req.into_body().map_err(BoxError::from).boxed());
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

/// Reads the whole body, counting it without keeping it, then answers its length: an app that
/// answers only after the whole request arrived.
async fn upload(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => return text(StatusCode::BAD_REQUEST, "the body broke off"),
        }
    }
    text(StatusCode::OK, format!("{n}\n"))
}

async fn connect(query: &str) -> Response<Body> {
    let Some(to) = param(query, "to") else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing the query parameter to=IP:PORT\n",
        );
    };
    let attempt = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(to.to_owned()),
    )
    .await;
    match attempt {
        Ok(Ok(_)) => text(StatusCode::OK, "connected\n"),
        Ok(Err(e)) => text(StatusCode::OK, format!("failed: {e}\n")),
        Err(_) => text(StatusCode::OK, "failed: no answer within 2 s\n"),
    }
}

fn threads(query: &str) -> Response<Body> {
    let n = match param_n(query, None) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let mut started = 0u64;
    let mut stopped = String::from("all started");
    for _ in 0..n {
        match std::thread::Builder::new()
            .stack_size(64 * 1024)
            // Plain threads that only wait: each costs the app one process slot (pids limit).
            .spawn(|| loop {
                std::thread::park();
            }) {
            Ok(_) => started += 1,
            Err(e) => {
                stopped = e.to_string();
                break;
            }
        }
    }
    text(StatusCode::OK, format!("{started} started; {stopped}\n"))
}

fn whoami() -> Response<Body> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?")
            .to_owned()
    };
    text(
        StatusCode::OK,
        format!("uid={} gid={}\n", first("Uid:"), first("Gid:")),
    )
}

fn write(query: &str) -> Response<Body> {
    let Some(path) = param(query, "path") else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing the query parameter path\n",
        );
    };
    match std::fs::write(path, b"x") {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(e) => text(StatusCode::OK, format!("failed: {e}\n")),
    }
}

/// Works one CPU flat out for `n` ms in the background and answers at once: a report being
/// generated, with no request open while it runs.
fn spin(query: &str) -> Response<Body> {
    let ms = match param_n(query, None) {
        Ok(n) => n,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    // A plain thread that must burn CPU: no runtime, no timers.
    #[allow(clippy::disallowed_methods)]
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
    });
    text(StatusCode::OK, format!("spinning for {ms} ms\n"))
}

fn hog(query: &str) -> Response<Body> {
    let mib = match param_n(query, None) {
        Ok(n) => n as usize,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        // Touched, so the memory is really used (the kernel kills over the limit).
        kept.push(vec![1u8; 1024 * 1024]);
    }
    let total: usize = kept.iter().map(Vec::len).sum();
    text(
        StatusCode::OK,
        format!("{} MiB held\n", total / (1024 * 1024)),
    )
}

fn bytes(query: &str) -> Response<Body> {
    let n = match param_n(query, None) {
        Ok(n) => n,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let chunks = stream::unfold(0u64, move |offset| async move {
        if offset >= n {
            return None;
        }
        let end = n.min(offset + CHUNK);
        let chunk: Vec<u8> = (offset..end).map(|i| (i % 251) as u8).collect();
        Some((Ok::<_, BoxError>(Frame::data(Bytes::from(chunk))), end))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    response
}

fn sse(query: &str) -> Response<Body> {
    let n = match param_n(query, Some(0)) {
        Ok(n) => n,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let period = if n == 0 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    // Each event is its own frame; hyper writes a frame out before polling for the next one.
    let events = stream::unfold(0u64, move |i| async move {
        if n != 0 && i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(period).await;
        }
        let event = Bytes::from(format!("data: {i}\n\n"));
        Some((Ok::<_, BoxError>(Frame::data(event)), i + 1))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn headers(req: &Request<Incoming>) -> Response<Body> {
    let mut object = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<String> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        object.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    let mut response = Response::new(full(serde_json::Value::Object(object).to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn set_cookies() -> Response<Body> {
    let mut response = text(StatusCode::OK, "three cookies\n");
    for cookie in [
        "a=1; Path=/",
        "b=2; Path=/; HttpOnly",
        // A comma inside the value: a proxy that joins Set-Cookie headers with ", " breaks this one.
        "c=3; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
    ] {
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static(cookie));
    }
    response
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let upgrade_to_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n");
    };
    if !upgrade_to_websocket {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n");
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut sink, mut messages) = ws.split();
        // Pings are answered by tungstenite itself; a close is answered and ends the stream.
        while let Some(Ok(message)) = messages.next().await {
            if (message.is_text() || message.is_binary()) && sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(param("inc", "inc"), Some(""));
        assert_eq!(param("a=1&n=42", "n"), Some("42"));
        assert_eq!(param("a=1", "n"), None);
        assert_eq!(param("", "n"), None);
        assert!(param_n("n=x", None).is_err());
        assert_eq!(param_n("", Some(0)).ok(), Some(0));
    }
}
