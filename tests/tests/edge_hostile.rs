//! The public edge against a hostile client, over raw sockets (the bytes exactly as an attacker
//! would send them): nothing a client sends strips or replaces the Host the request is routed by,
//! reaches the edge's or a node's own routes, or forges the forwarding headers an app trusts;
//! errors name the app, never its task id, node or address. A real master, node, edge and the
//! counter app in Docker (its `/headers` echoes what the app received).

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};
use shadow_tests::{
    edge,
    fixtures::{counter_task, domain},
    image::counter_image,
    master::{self, MasterOptions},
    node,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` on a fresh connection and reads the whole answer (the request asks to close).
async fn raw(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the edge answers and closes within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The headers the app received, from the counter app's `/headers` echo (chunked or not, the
/// JSON object is the first `{…}` of the body).
fn echoed(answer: &str) -> Value {
    let b = body(answer);
    let (start, end) = (b.find('{').expect("json"), b.rfind('}').expect("json"));
    serde_json::from_str(&b[start..=end]).expect("the app's echo is JSON")
}

#[tokio::test]
async fn a_hostile_client_cannot_strip_host_forge_forwarding_or_reach_internals() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let e = edge::spawn(&m, |_| {}).await;
    let d = domain("hostile");
    let t = counter_task(&m, &d, "none", |_| {}).await;
    let addr = e.addr;

    // A normal request works (and wakes the app).
    let (status, answer) = raw(
        addr,
        &format!("GET /headers HTTP/1.1\r\nHost: {d}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // `Connection: close, host` must not strip Host: the app still gets it, and the request
    // never lands on the node's own routes.
    let (status, answer) = raw(
        addr,
        &format!("GET /headers HTTP/1.1\r\nHost: {d}\r\nConnection: close, host, x-forwarded-for\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = echoed(&answer);
    assert_eq!(got["host"], d.as_str(), "{got}");
    assert_eq!(
        got["x-forwarded-for"], "127.0.0.1, 127.0.0.1",
        "edge, then node: {got}"
    );

    // Forged forwarding headers and an unsafe request id are replaced by the edge's own.
    let (status, answer) = raw(
        addr,
        &format!(
            "GET /headers HTTP/1.1\r\nHost: {d}\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Request-Id: a b<script>\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = echoed(&answer);
    assert!(
        !got.to_string().contains("6.6.6.6"),
        "forged address reached the app: {got}"
    );
    assert!(got.get("x-real-ip").is_none(), "{got}");
    assert_eq!(got["x-forwarded-proto"], "http", "{got}");
    assert_eq!(got["x-forwarded-host"], d.as_str(), "{got}");
    assert!(
        got["forwarded"]
            .as_str()
            .is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http")),
        "{got}"
    );
    let id = got["x-request-id"].as_str().expect("a request id");
    assert!(
        !id.contains(' ') && !id.contains('<'),
        "unsafe id kept: {id}"
    );

    // Behind a trusted proxy (a load balancer), its forwarding headers are kept and appended to;
    // the same headers from anyone else are replaced.
    let e2 = edge::spawn(&m, |c| c.trusted_proxies = vec!["127.0.0.5/32".into()]).await;
    let forwarded = format!(
        "GET /headers HTTP/1.1\r\nHost: {d}\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
    );
    for (src, want_for, want_proto) in [
        ([127, 0, 0, 5], "203.0.113.9, 127.0.0.5, 127.0.0.1", "https"),
        ([127, 0, 0, 6], "127.0.0.6, 127.0.0.1", "http"),
    ] {
        let mut s = connect_from(src, e2.addr).await;
        s.write_all(forwarded.as_bytes()).await.expect("write");
        let answer = until_closed(&mut s, Duration::from_secs(30)).await;
        let got = echoed(&answer);
        assert_eq!(got["x-forwarded-for"], want_for, "from {src:?}: {got}");
        assert_eq!(got["x-forwarded-proto"], want_proto, "from {src:?}: {got}");
    }

    // Absolute-form: routed and forwarded by the same host; a disagreeing Host is a 400.
    let (status, answer) = raw(
        addr,
        &format!("GET http://{d}/headers HTTP/1.1\r\nHost: {d}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(echoed(&answer)["host"], d.as_str());
    let (status, answer) = raw(
        addr,
        &format!(
            "GET http://{d}/metrics HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(body(&answer).contains("different hosts"), "{answer}");

    // Two Host headers: 400, whichever the edge would have routed by.
    let (status, answer) = raw(
        addr,
        &format!("GET /headers HTTP/1.1\r\nHost: {d}\r\nHost: shadow-health.invalid\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // The edge's own routes are not on the public listener, whatever the Host.
    for host in ["unknown.example", "shadow-health.invalid", "127.0.0.1"] {
        for path in ["/metrics", "/healthz"] {
            let (status, answer) = raw(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(status, 404, "{path} for {host}: {answer}");
            assert!(!answer.contains("shadow_"), "{answer}");
            assert!(!answer.contains(&n.id), "{answer}");
        }
    }
    // They are on the admin listener.
    let metrics = e.admin().get("any", "/metrics").await.expect("metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(&t.id),
        "per-task metrics are for operators"
    );

    // A task may not claim the hostname edges use for node health checks.
    let (code, err) = m
        .raw()
        .send(
            "POST",
            "/tasks/",
            Some(
                &json!({"name": "x", "domains": ["shadow-health.invalid"], "image": "x"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["field"], "domains[0]");
    // Nor take another task's domain by adding a dot.
    let (code, err) = m
        .raw()
        .send(
            "POST",
            "/tasks/",
            Some(&json!({"name": "x", "domains": [format!("{d}.")], "image": "x"}).to_string()),
        )
        .await;
    assert_eq!(code, 409, "{err}");
}

#[tokio::test]
async fn a_failed_start_tells_the_client_the_app_not_the_internals() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let e = edge::spawn(&m, |_| {}).await;
    let d = domain("broken");
    let t = counter_task(&m, &d, "none", |s| {
        s["image"] = json!("shadow-test/no-such-image:never");
        s["start_timeout_s"] = json!(5);
    })
    .await;
    let (status, answer) = raw(
        e.addr,
        &format!("GET / HTTP/1.1\r\nHost: {d}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        body(&answer).contains("app counter could not start"),
        "{answer}"
    );
    for secret in [
        t.id.as_str(),
        n.id.as_str(),
        &n.addr.to_string(),
        "x-shadow-",
    ] {
        assert!(
            !answer.contains(secret),
            "{secret:?} reached the client: {answer}"
        );
    }
}

/// A connection from a chosen loopback address (127.0.0.x), so one test can be several clients.
async fn connect_from(src: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((src, 0))).expect("bind source");
    s.connect(to).await.expect("connect")
}

/// Reads until the peer closes (at most `limit`); returns what came.
async fn until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!(
            "the edge kept the connection open for {limit:?}: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

#[tokio::test]
async fn stalled_and_greedy_clients_are_cut_and_capped_while_others_are_served() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let _n = node::spawn(&m, |_| {}).await;
    let e = edge::spawn(&m, |c| {
        c.client_header_timeout_s = 1;
        c.client_body_stall_s = 1;
        c.client_max_per_ip = 20;
        c.client_max_total = 260;
    })
    .await;
    let d = domain("greedy");
    counter_task(&m, &d, "none", |_| {}).await;
    let normal = format!("GET / HTTP/1.1\r\nHost: {d}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(e.addr, &normal).await.0, 200);

    // A body that stops after 10 of 100 000 bytes, to an app that answers once it has it all:
    // 408, and the connection is closed (and the node's and the app's with it).
    let stalled = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: {d}\r\nContent-Length: 100000\r\n\r\n0123456789")
    };
    let mut s = connect_from([127, 0, 0, 2], e.addr).await;
    s.write_all(stalled("/upload").as_bytes())
        .await
        .expect("write");
    let answer = until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // To an app that streams its answer at once, the answer is cut off and closed.
    let mut s = connect_from([127, 0, 0, 2], e.addr).await;
    s.write_all(stalled("/echo").as_bytes())
        .await
        .expect("write");
    let answer = until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(answer.len() < 100_000, "{answer}");

    // A request head that never ends: the connection is closed.
    let mut s = connect_from([127, 0, 0, 2], e.addr).await;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {d}\r\n").as_bytes())
        .await
        .expect("write");
    until_closed(&mut s, Duration::from_secs(20)).await;

    // One address may hold 20 connections; the 21st is told 429.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from([127, 0, 0, 3], e.addr).await);
    }
    let mut extra = connect_from([127, 0, 0, 3], e.addr).await;
    extra.write_all(normal.as_bytes()).await.expect("write");
    let answer = until_closed(&mut extra, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );

    // 200 more hostile connections from ten addresses, each dribbling a request head, and the
    // edge still answers a normal client.
    let mut hostile = Vec::new();
    for i in 0..200u8 {
        let mut s = connect_from([127, 0, 1, 10 + i % 10], e.addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
        hostile.push(s);
    }
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), raw(e.addr, &normal))
        .await
        .expect("a normal request is answered while 220 connections are held");
    assert_eq!(status, 200, "{answer}");
    // The total cap (260): 20 + 200 + the normal one's slot are taken; 40 more fit, then 503.
    let mut more = Vec::new();
    for i in 0..40u8 {
        more.push(connect_from([127, 0, 2, 10 + i % 10], e.addr).await);
    }
    let mut over = connect_from([127, 0, 0, 4], e.addr).await;
    over.write_all(normal.as_bytes()).await.expect("write");
    let answer = until_closed(&mut over, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");

    let metrics = e.metrics().await;
    for line in [
        "shadow_edge_client_body_stalls_total 2",
        "shadow_edge_client_connections_refused_total{cap=\"per_ip\"} 1",
        "shadow_edge_client_connections_refused_total{cap=\"total\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    drop((held, hostile, more));
}
