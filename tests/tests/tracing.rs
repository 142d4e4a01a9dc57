//! OpenTelemetry export end to end: an edge and a node as real processes export their request
//! spans over OTLP/HTTP to a collector on loopback, and one trace runs from the client's
//! `traceparent` through the edge and the node to the app.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use shadow_tests::{
    fixtures::{counter_task, domain},
    http::{empty, Client},
    image::counter_image,
    master::{self, MasterOptions},
    node::unique_id,
    procs,
};

/// An OTLP/HTTP receiver: keeps every JSON body POSTed to /v1/traces.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if let (Ok(body), "/v1/traces") = (body, path.as_str()) {
                            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                keep.lock().expect("lock").push(v);
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from("{}"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

/// `(service, span)` for every exported span.
fn spans(bodies: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push((service.clone(), s.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn one_trace_runs_from_the_client_through_edge_and_node_to_the_app() {
    counter_image().await.expect("image");
    let (otlp, got) = collector().await;
    let m = master::spawn(MasterOptions::default()).await;
    let host = domain("traced");
    counter_task(&m, &host, "none", |_| {}).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("SHADOW_LOG", "info"),
    ];
    let dir = tempfile::tempdir().expect("dir");
    let node_id = unique_id("traced-node");
    let _node = procs::spawn_node(&m.url, &node_id, dir.path(), &env).await;
    let edge = procs::spawn_edge(&m.url, &env).await;
    // The edge routes once it sees the node healthy; then one traced request.
    let client = Client::new(edge.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !client.get(&host, "/").await.is_ok_and(|r| r.status == 200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer through the edge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let reply = client
        .request(
            "GET",
            &host,
            "/headers",
            &[("traceparent", &format!("00-{trace}-{parent}-01"))],
            empty(),
        )
        .await
        .expect("answer");
    assert_eq!(reply.status, 200);
    let seen: Value = serde_json::from_str(&reply.body).expect("the app's headers");
    let app_parent = seen["traceparent"]
        .as_str()
        .expect("the app got a traceparent");
    assert!(
        app_parent.starts_with(&format!("00-{trace}-")),
        "{app_parent}"
    );
    let app_parent_span = app_parent.split('-').nth(2).expect("parent id").to_owned();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (edge_span, node_span) = loop {
        let all = spans(&got.lock().expect("lock"));
        let find = |service: &str| {
            all.iter()
                .find(|(s, span)| {
                    s == service && span["traceId"] == trace && span["name"] == "request"
                })
                .map(|(_, span)| span.clone())
        };
        if let (Some(e), Some(n)) = (find("shadow-edgeproxy"), find("shadow-nodeproxy")) {
            break (e, n);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request spans of both programs in trace {trace} within 30 s: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        edge_span["parentSpanId"], parent,
        "the edge continues the client's trace"
    );
    assert_eq!(
        node_span["parentSpanId"], edge_span["spanId"],
        "the node's span is the edge's child"
    );
    assert_eq!(
        node_span["spanId"],
        app_parent_span.as_str(),
        "the app's parent is the node's span"
    );
}
