//! The node proxy end to end: a real master, a real node proxy, the real Docker Engine and the
//! counter test app in a `FROM scratch` image, over real sockets on loopback.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use shadow_tests::{
    fixtures::{counter_task, domain, open_websocket, status_until, until_released},
    http::{empty, Client},
    image::counter_image,
    master::{self, MasterHandle, MasterOptions},
    node::{self, NodeHandle},
};
use tokio_tungstenite::tungstenite::Message;

async fn setup() -> (MasterHandle, NodeHandle) {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    (m, n)
}

#[tokio::test]
async fn the_first_request_starts_the_app_and_later_ones_reuse_it() {
    let (m, n) = setup().await;
    let d = domain("first");
    let task = counter_task(&m, &d, "local", |_| {}).await;
    assert!(
        n.containers().await.is_empty(),
        "nothing runs before a request"
    );

    let c = Client::new(n.addr);
    let r = c.post(&d, "/count", "").await.expect("request");
    assert_eq!((r.status, r.body.trim()), (200, "1"), "{r:?}");
    let r = c.post(&d, "/count", "").await.expect("request");
    assert_eq!(r.body.trim(), "2");

    let containers = n.containers().await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    let cont = &containers[0];
    assert!(cont.running);
    assert!(
        cont.name
            .starts_with(&format!("shadow-counter-{}-", task.id)),
        "{}",
        cont.name
    );
    assert_eq!(cont.labels.get("shadow.task"), Some(&task.id));
    assert!(
        cont.host_addr.is_some_and(|a| a.ip().is_loopback()),
        "published on 127.0.0.1 only"
    );
    // Stateful: the node holds the task's lease.
    let leases = m.client.list_leases().await.expect("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].node, n.id);

    let unknown = c.get("nobody.test", "/").await.expect("request");
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("nobody.test"), "{}", unknown.body);
    n.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_first_requests_share_one_start() {
    let (m, n) = setup().await;
    let d = domain("herd");
    counter_task(&m, &d, "local", |_| {}).await;
    let c = Client::new(n.addr);
    let answers = futures_util::future::join_all((0..100).map(|_| {
        let (c, d) = (c.clone(), d.clone());
        async move { c.post(&d, "/count", "").await }
    }))
    .await;
    let mut counts: Vec<u64> = answers
        .iter()
        .map(|r| {
            let r = r.as_ref().expect("answered");
            assert_eq!(r.status, 200, "{r:?}");
            r.body.trim().parse().expect("a count")
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=100).collect::<Vec<u64>>(),
        "every request reached the one app"
    );
    assert_eq!(n.containers().await.len(), 1);
    let metrics = c
        .get("node.invalid", "/metrics")
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains("shadow_node_cold_start_seconds_count{phase=\"total\"} 1"),
        "{metrics}"
    );
    n.stop().await;
}

#[tokio::test]
async fn the_count_survives_an_idle_reap_and_a_fresh_start() {
    let (m, n) = setup().await;
    let d = domain("reap");
    let task = counter_task(&m, &d, "local", |s| s["idle_timeout_s"] = json!(1)).await;
    let c = Client::new(n.addr);
    assert_eq!(
        c.post(&d, "/count", "").await.expect("req").body.trim(),
        "1"
    );
    assert_eq!(
        c.post(&d, "/count", "").await.expect("req").body.trim(),
        "2"
    );
    let first = n.containers().await[0].id.clone();

    until_released(&m, &task.id).await;
    assert!(
        n.containers().await.is_empty(),
        "the idle container is removed"
    );
    assert!(
        m.client.list_leases().await.expect("leases").is_empty(),
        "and its lease released"
    );

    let r = c.get(&d, "/").await.expect("req");
    assert_eq!((r.status, r.body.trim()), (200, "2"), "the data came back");
    let second = n.containers().await;
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].id, first, "a new container");
    n.stop().await;
}

#[tokio::test]
async fn deleting_a_running_task_stops_its_app_without_waiting_for_idle() {
    let (m, n) = setup().await;
    let d = domain("deleted");
    // The default idle timeout (300 s) is far beyond the bound below.
    let task = counter_task(&m, &d, "local", |_| {}).await;
    let c = Client::new(n.addr);
    assert_eq!(c.post(&d, "/count", "").await.expect("req").status, 200);
    assert_eq!(n.containers().await.len(), 1);

    m.client.delete_task(&task.id).await.expect("delete");
    tokio::time::timeout(Duration::from_secs(60), until_released(&m, &task.id))
        .await
        .expect("the node stops a deleted task's app and releases its lease");
    assert!(n.containers().await.is_empty(), "its container is removed");
    assert_eq!(c.get(&d, "/").await.expect("req").status, 404);
    n.stop().await;
}

#[tokio::test]
async fn websocket_and_sse_pass_through_and_an_open_socket_keeps_the_app_alive() {
    let (m, n) = setup().await;
    let d = domain("ws");
    let task = counter_task(&m, &d, "local", |s| s["idle_timeout_s"] = json!(1)).await;

    let mut ws = open_websocket(n.addr, &d).await;
    ws.send(Message::text("hello")).await.expect("send");
    let echoed = ws.next().await.expect("a reply").expect("ok");
    assert_eq!(echoed.into_text().expect("text").as_str(), "hello");

    // Three idle timeouts pass with the socket open and silent: the app must stay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        n.containers().await.len(),
        1,
        "an open WebSocket counts as activity"
    );
    ws.send(Message::text("still there")).await.expect("send");
    let echoed = ws.next().await.expect("a reply").expect("ok");
    assert_eq!(echoed.into_text().expect("text").as_str(), "still there");

    // SSE: events arrive one by one.
    let c = Client::new(n.addr);
    let req = http::Request::get("/sse?n=3")
        .header("host", &d)
        .body(empty())
        .expect("req");
    let resp = c.send(req).await.expect("sse");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut seen = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert_eq!(seen.matches("data: ").count(), 3, "{seen}");

    ws.close(None).await.expect("close");
    drop(ws);
    until_released(&m, &task.id).await;
    assert!(n.containers().await.is_empty());
    n.stop().await;
}

#[tokio::test]
async fn a_200_mib_body_streams_both_ways() {
    let (m, n) = setup().await;
    let d = domain("big");
    counter_task(&m, &d, "local", |_| {}).await;
    let c = Client::new(n.addr);
    const SIZE: u64 = 200 << 20;

    let req = http::Request::get(format!("/bytes?n={SIZE}"))
        .header("host", &d)
        .body(empty())
        .expect("req");
    let resp = c.send(req).await.expect("download");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut got, mut i) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            for b in data.iter() {
                assert_eq!(u64::from(*b), i % 251, "byte {i}");
                i += 1;
            }
            got += data.len() as u64;
        }
    }
    assert_eq!(got, SIZE);

    // Upload 200 MiB generated on the fly and count the echo.
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let chunks = futures_util::stream::iter(
        (0..200).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let req = http::Request::post("/echo")
        .header("host", &d)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("req");
    let resp = c.send(req).await.expect("upload");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut echoed = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            assert!(data.iter().all(|b| *b == 7));
            echoed += data.len() as u64;
        }
    }
    assert_eq!(echoed, SIZE);
    n.stop().await;
}

#[tokio::test]
async fn headers_survive_and_forwarded_headers_are_set() {
    let (m, n) = setup().await;
    let d = domain("hdr");
    counter_task(&m, &d, "local", |s| s["volume"] = json!({"kind": "none"})).await;
    let c = Client::new(n.addr);
    let r = c.get(&d, "/set-cookies").await.expect("req");
    assert_eq!(
        r.headers.get_all("set-cookie").iter().count(),
        3,
        "{:?}",
        r.headers
    );
    let r = c
        .request(
            "GET",
            &d,
            "/headers",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
            ],
            empty(),
        )
        .await
        .expect("req");
    let h: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["host"], d.as_str());
    assert!(
        h.get("x-drop-me").is_none(),
        "hop-by-hop header named in Connection is dropped: {h}"
    );
    assert!(h["x-request-id"].as_str().is_some_and(|v| !v.is_empty()));
    n.stop().await;
}

#[tokio::test]
async fn a_slow_start_is_answered_when_ready() {
    let (m, n) = setup().await;
    let d = domain("slow");
    counter_task(&m, &d, "local", |s| {
        s["env"] = json!({"START_DELAY_MS": "2000"});
        s["start_timeout_s"] = json!(20);
    })
    .await;
    let r = Client::new(n.addr).get(&d, "/").await.expect("req");
    assert_eq!(r.status, 200, "held until ready, not 502: {r:?}");
    n.stop().await;
}

#[tokio::test]
async fn a_start_longer_than_the_lease_keeps_the_lease() {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    // The app takes five lease lifetimes to come up.
    let n = node::spawn(&m, |c| c.lease_ttl_ms = 600).await;
    let d = domain("longstart");
    let task = counter_task(&m, &d, "local", |s| {
        s["env"] = json!({"START_DELAY_MS": "3000"});
        s["start_timeout_s"] = json!(20);
    })
    .await;
    let c = Client::new(n.addr);
    let r = c.post(&d, "/count", "").await.expect("req");
    assert_eq!((r.status, r.body.trim()), (200, "1"), "{r:?}");
    let leases = m.client.list_leases().await.expect("leases");
    assert!(
        leases
            .iter()
            .any(|l| l.task_id == task.id && l.node == n.id),
        "the lease did not lapse during the start: {leases:?}"
    );
    let first = n.containers().await;
    let r = c.post(&d, "/count", "").await.expect("req");
    assert_eq!((r.status, r.body.trim()), (200, "2"), "{r:?}");
    assert_eq!(n.containers().await, first, "the same container serves on");
    n.stop().await;
}

#[tokio::test]
async fn a_failing_start_gives_503_and_leaves_nothing_behind() {
    let (m, n) = setup().await;
    let d = domain("fail");
    counter_task(&m, &d, "local", |s| s["env"] = json!({"FAIL_START": "1"})).await;
    let c = Client::new(n.addr);
    let answers = futures_util::future::join_all((0..5).map(|_| c.get(&d, "/"))).await;
    for r in answers {
        let r = r.expect("answered");
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.headers.contains_key("retry-after"));
    }
    assert!(n.containers().await.is_empty(), "no half-made container");
    assert!(
        m.client.list_leases().await.expect("leases").is_empty(),
        "lease released"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_start_that_exceeds_its_timeout_gives_503() {
    let (m, n) = setup().await;
    let d = domain("late");
    let task = counter_task(&m, &d, "local", |s| {
        s["env"] = json!({"START_DELAY_MS": "60000"});
        s["start_timeout_s"] = json!(2);
    })
    .await;
    let r = Client::new(n.addr).get(&d, "/").await.expect("req");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("2s"), "{}", r.body);
    // The start's own clean-up runs right after the timeout; it ends by releasing the lease.
    until_released(&m, &task.id).await;
    assert!(n.containers().await.is_empty());
    n.stop().await;
}

#[tokio::test]
async fn a_browser_gets_a_loading_page_when_the_task_asks_for_it() {
    let (m, n) = setup().await;
    let d = domain("page");
    counter_task(&m, &d, "local", |s| {
        s["cold_start"] = json!("page");
        s["env"] = json!({"START_DELAY_MS": "1000"});
    })
    .await;
    let c = Client::new(n.addr);
    let r = c
        .request("GET", &d, "/", &[("accept", "text/html")], empty())
        .await
        .expect("req");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("<h1>Starting counter"), "{}", r.body);
    // A non-browser client is held until ready, and the start kicked off by the page is shared.
    let r = c.get(&d, "/").await.expect("req");
    assert_eq!(r.status, 200);
    let r = c
        .request("GET", &d, "/", &[("accept", "text/html")], empty())
        .await
        .expect("req");
    assert_eq!(r.status, 200, "once running, browsers get the app");
    assert_eq!(n.containers().await.len(), 1);
    n.stop().await;
}

#[tokio::test]
async fn the_node_removes_only_its_own_leftovers_at_start_up() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let id = node::unique_id("node");
    let mine = format!("{id}-leftover");
    let other = format!("{id}-other");
    let plain = format!("{id}-plain");
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let label_mine = format!("shadow.node={id}");
    docker(&[
        "create",
        "--name",
        &mine,
        "--label",
        &label_mine,
        shadow_tests::image::COUNTER_IMAGE,
    ]);
    docker(&[
        "create",
        "--name",
        &other,
        "--label",
        "shadow.node=someone-else",
        shadow_tests::image::COUNTER_IMAGE,
    ]);
    docker(&[
        "create",
        "--name",
        &plain,
        shadow_tests::image::COUNTER_IMAGE,
    ]);

    let n = node::spawn(&m, |c| c.node_id = id.clone()).await;
    let exists = |name: &str| {
        std::process::Command::new("docker")
            .args(["inspect", name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(!exists(&mine), "the node's own leftover is removed");
    assert!(exists(&other), "another node's container is untouched");
    assert!(exists(&plain), "an unlabelled container is untouched");
    docker(&["rm", "-f", &other, &plain]);
    n.stop().await;
}

#[tokio::test]
async fn stopping_the_node_stops_its_apps() {
    let (m, n) = setup().await;
    let d = domain("bye");
    counter_task(&m, &d, "local", |_| {}).await;
    assert_eq!(
        Client::new(n.addr).get(&d, "/").await.expect("req").status,
        200
    );
    let runtime = n.runtime.clone();
    let id = n.id.clone();
    n.stop().await;
    use shadow_nodeproxy::runtime::ContainerRuntime;
    assert!(runtime
        .list_labelled("shadow.node", &id)
        .await
        .expect("list")
        .is_empty());
    assert!(m.client.list_leases().await.expect("leases").is_empty());
}

#[tokio::test]
async fn an_app_busy_without_requests_is_neither_frozen_nor_stopped_half_way() {
    counter_image().await.expect("test image builds");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| {
        c.busy_cpu_percent = 10.0;
        c.busy_window_ms = 300;
        c.frozen_timeout_s = 600;
    })
    .await;
    let d = domain("busy");
    let task = counter_task(&m, &d, "local", |s| s["idle_timeout_s"] = json!(1)).await;
    let c = Client::new(n.addr);
    // The app answers at once and then works for 4 s with no request open: a report being
    // generated. Its idle timeout is 1 s.
    let work = Duration::from_secs(4);
    let r = c
        .get(&d, &format!("/spin?n={}", work.as_millis()))
        .await
        .expect("req");
    assert_eq!(r.status, 200, "{r:?}");
    let answered = tokio::time::Instant::now();
    status_until(&m, &task.id, "the app runs", |s| {
        s.state == shadow_common::status::AppState::Running
    })
    .await;
    status_until(
        &m,
        &task.id,
        "the app is frozen once its work is done",
        |s| s.state == shadow_common::status::AppState::Frozen,
    )
    .await;
    let ran = answered.elapsed();
    assert!(
        ran >= work,
        "frozen {ran:?} after its last request, while it still worked (for {work:?})"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_min_running_app_starts_without_a_request_and_is_not_stopped_when_idle() {
    let (m, n) = setup().await;
    let d = domain("warm");
    let task = counter_task(&m, &d, "local", |s| {
        s["idle_timeout_s"] = json!(1);
        s["min_running"] = json!(true);
    })
    .await;
    // No request: the node the edges would route it to (the only one) starts it.
    let running = status_until(&m, &task.id, "the app starts without a request", |s| {
        s.state == shadow_common::status::AppState::Running
    })
    .await;
    assert_eq!(running.nodes[0].cold_starts, 1);
    let first = n.containers().await;
    assert_eq!(first.len(), 1);
    // Three idle timeouts later it still runs, the same container.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let s = m.client.task_status(&task.id).await.expect("status");
        assert_eq!(s.state, shadow_common::status::AppState::Running, "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(n.containers().await[0].id, first[0].id);
    // The first request finds it warm.
    let r = Client::new(n.addr)
        .post(&d, "/count", "")
        .await
        .expect("req");
    assert_eq!((r.status, r.body.trim()), (200, "1"));
    // Without the flag it idles out like any app.
    m.client
        .patch_task(&task.id, &json!({"min_running": false}))
        .await
        .expect("patch");
    status_until(&m, &task.id, "the app stops once it may", |s| {
        s.state == shadow_common::status::AppState::Idle
    })
    .await;
    n.stop().await;
}
