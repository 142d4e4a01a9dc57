//! Usage accounting end to end: a known workload through a real node and container, its
//! figures in `GET /usage` and `/metrics`, kept across a master restart, and a node's report
//! that is sent twice counted once.

use std::time::Duration;

use shadow_common::{
    status::AppState,
    usage::{UsageRow, HOUR_S},
};
use shadow_tests::{
    fixtures::{counter_task, domain, status_until},
    http::{full, Client},
    image::counter_image,
    master::{self, MasterOptions},
    node,
};
use tokio::time::Instant;

/// The app's usage summed over its hours.
fn total(rows: &[UsageRow], task: &str) -> Option<UsageRow> {
    let mut mine = rows.iter().filter(|r| r.task_id == task);
    let mut t = mine.next()?.clone();
    for r in mine {
        t.add(r);
    }
    Some(t)
}

#[tokio::test]
async fn a_known_workload_is_counted_and_still_there_after_a_master_restart() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.usage_report_s = 1).await;
    let host = domain("usage");
    let task = counter_task(&m, &host, "none", |s| {
        s["name"] = "metered".into();
        s["idle_timeout_s"] = 600.into();
    })
    .await;
    let client = Client::new(n.addr);

    // Busy for BUSY: a 1000-byte body echoed and 10 000 bytes sent back, over and over, and
    // 32 MiB held once.
    const BUSY: Duration = Duration::from_secs(3);
    let began = Instant::now();
    let first = client.get(&host, "/hog?n=32").await.expect("hog");
    assert_eq!(first.status, 200, "{}", first.body);
    let busy_from = Instant::now();
    let (mut requests, mut sent_in, mut bytes_out) = (1u64, 0u64, first.body.len() as u64);
    let body = "x".repeat(1000);
    while busy_from.elapsed() < BUSY {
        let echo = client
            .request("POST", &host, "/echo", &[], full(body.clone()))
            .await
            .expect("echo");
        assert_eq!(echo.body.len(), 1000);
        let bytes = client.get(&host, "/bytes?n=10000").await.expect("bytes");
        assert_eq!(bytes.status, 200);
        requests += 2;
        sent_in += 1000;
        bytes_out += 1000 + 10_000;
    }
    let busy_for = busy_from.elapsed().as_secs_f64();

    let slept = m.client.sleep_task(&task.id).await.expect("sleep");
    assert_eq!(slept["nodes"][0], n.id.as_str(), "{slept}");
    status_until(&m, &task.id, "the app stopped", |s| {
        s.state == AppState::Idle
    })
    .await;
    let ran_at_most = began.elapsed().as_secs_f64();

    // A node that stops sends its last figures before it ends.
    n.stop().await;
    let rows = m
        .client
        .usage(Some(&task.id), None, None)
        .await
        .expect("usage");
    let counted = total(&rows, &task.id).expect("the app's usage");
    assert_eq!(counted.requests, requests);
    assert_eq!(counted.name.as_deref(), Some("metered"));
    assert_eq!(counted.cold_starts, 1);
    assert!(
        counted.running_s >= busy_for && counted.running_s <= ran_at_most + 0.5,
        "ran {} s; busy {busy_for:.2} s of {ran_at_most:.2} s",
        counted.running_s
    );
    assert_eq!(counted.bytes_in, sent_in, "request body bytes");
    assert!(
        counted.bytes_out >= bytes_out,
        "{} bytes out, at least {bytes_out} sent",
        counted.bytes_out
    );
    assert!(counted.cpu_s > 0.0, "no CPU time counted");
    assert!(
        counted.peak_memory_bytes >= 32 << 20,
        "peak {} bytes, the app held 32 MiB",
        counted.peak_memory_bytes
    );
    let hour = counted.hour;
    assert_eq!(hour % HOUR_S, 0);

    // Prometheus: one series per app, labelled with its name.
    let metrics = reqwest::get(format!("{}/metrics", m.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series = format!(
        "shadow_app_requests_total{{app=\"metered\",task=\"{}\"}} {requests}",
        task.id
    );
    assert!(metrics.contains(&series), "{series} missing:\n{metrics}");

    // The same figures from a restarted master.
    let dir = m.stop().await;
    let m = master::spawn_in(dir, MasterOptions::default()).await;
    let rows = m
        .client
        .usage(Some(&task.id), None, None)
        .await
        .expect("usage");
    assert_eq!(total(&rows, &task.id).as_ref(), Some(&counted));
    let none = m
        .client
        .usage(Some(&task.id), Some(hour + HOUR_S), None)
        .await
        .expect("later");
    assert!(none.is_empty(), "rows after the span: {none:?}");

    // A deleted app's series go; its history stays.
    m.client.delete_task(&task.id).await.expect("delete");
    let metrics = reqwest::get(format!("{}/metrics", m.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains(&task.id), "{metrics}");
    let rows = m.client.usage(None, None, None).await.expect("usage");
    assert_eq!(total(&rows, &task.id).map(|t| t.requests), Some(requests));
}

#[tokio::test]
async fn a_report_sent_again_counts_once_and_bad_reports_are_refused() {
    let m = master::spawn(MasterOptions::default()).await;
    let raw = m.raw();
    let reg = r#"{"id": "meter-node", "address": "127.0.0.1:9"}"#;
    assert_eq!(raw.send("POST", "/nodes/", Some(reg)).await.0, 200);
    let report = |seq: u64, hour: u64| {
        serde_json::json!({
            "node": "meter-node", "boot": "b1", "seq": seq,
            "deltas": [{"task_id": "t1", "hour": hour, "requests": 5, "running_ms": 1500}]
        })
        .to_string()
    };
    let (status, body) = raw.send("POST", "/usage", Some(&report(1, 7200))).await;
    assert_eq!((status, &body["added"]), (200, &serde_json::json!(true)));
    let (status, body) = raw.send("POST", "/usage", Some(&report(1, 7200))).await;
    assert_eq!(
        (status, &body["added"]),
        (200, &serde_json::json!(false)),
        "a retry"
    );

    let (status, body) = raw.send("POST", "/usage", Some(&report(2, 7201))).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("start of an hour"),
        "{body}"
    );
    let stranger = report(3, 7200).replace("meter-node", "stranger");
    let (status, body) = raw.send("POST", "/usage", Some(&stranger)).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("POST /nodes/"),
        "{body}"
    );
    let (status, body) = raw.send("GET", "/usage?from=yesterday", None).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "from");

    let rows = m.client.usage(Some("t1"), None, None).await.expect("usage");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].running_s), (5, 1.5));
}
