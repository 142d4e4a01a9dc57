//! The edge proxy end to end: a real master, real node proxies (in-process, or processes where one
//! must die by SIGKILL), a real S3 server, real Docker, real sockets.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{json, Value};
use shadow_common::{
    follower::Follower,
    node::{Heartbeat, NodeRegistration},
    task::Task,
};
use shadow_tests::{
    edge,
    fixtures::docker_rm_node,
    http::Client,
    image::{counter_image, COUNTER_IMAGE},
    master::{self, MasterHandle, MasterOptions},
    node::{self, unique_id},
    procs, s3,
};

async fn task(m: &MasterHandle, domain: &str, tweak: impl FnOnce(&mut Value)) -> Task {
    let mut spec = json!({"name": "counter", "domains": [domain], "image": COUNTER_IMAGE, "start_timeout_s": 30});
    tweak(&mut spec);
    m.client
        .create_task(&serde_json::from_value(spec).expect("spec"))
        .await
        .expect("create")
}

/// Registers a node named after `name` at `address` that is no Shadow node, and heartbeats
/// for it every 50 ms (so the master keeps it healthy) until the returned task is aborted.
async fn heartbeating_node(
    m: &MasterHandle,
    name: &str,
    address: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let id = unique_id(name);
    m.client
        .register_node(&NodeRegistration {
            id: id.clone(),
            address: address.to_string(),
            capacity: 10,
            volume_kinds: None,
        })
        .await
        .expect("register the node");
    let client = m.client.clone();
    tokio::spawn(async move {
        loop {
            let _ = client.heartbeat(&id, &Heartbeat::default()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn fast_master() -> MasterOptions {
    MasterOptions {
        heartbeat_interval: Duration::from_millis(100),
        ..Default::default()
    }
}

/// Which node runs which task, from the containers' labels.
async fn placement(nodes: &[&node::NodeHandle]) -> Vec<(String, String)> {
    let mut out = vec![];
    for n in nodes {
        for c in n.containers().await {
            if let Some(t) = c.labels.get("shadow.task") {
                out.push((t.clone(), n.id.clone()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_thousand_requests_for_one_task_land_on_one_node() {
    counter_image().await.expect("image");
    let m = master::spawn(fast_master()).await;
    let a = node::spawn(&m, |_| {}).await;
    let b = node::spawn(&m, |_| {}).await;
    let e = edge::spawn(&m, |_| {}).await;
    let d = format!("{}.test", unique_id("sticky"));
    let t = task(&m, &d, |_| {}).await;
    let c = e.client();
    for i in 0..1000 {
        let r = c.get(&d, "/").await.expect("answer");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    let placed = placement(&[&a, &b]).await;
    assert_eq!(placed.len(), 1, "one container on one node: {placed:?}");
    assert_eq!(placed[0].0, t.id);
    let holder = if placed[0].1 == a.id { &a } else { &b };
    let metrics = Client::new(holder.addr)
        .get("x.invalid", "/metrics")
        .await
        .expect("metrics")
        .body;
    assert!(
        metrics.contains(&format!(
            "shadow_node_requests_total{{app=\"counter\",status=\"200\",task=\"{}\"}} 1000",
            t.id
        )),
        "{metrics}"
    );
    e.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_edges_agree_on_placement() {
    counter_image().await.expect("image");
    let m = master::spawn(fast_master()).await;
    let a = node::spawn(&m, |_| {}).await;
    let b = node::spawn(&m, |_| {}).await;
    let e1 = edge::spawn(&m, |_| {}).await;
    let e2 = edge::spawn(&m, |_| {}).await;
    let mut domains = vec![];
    for i in 0..8 {
        let d = format!("{}-{i}.test", unique_id("agree"));
        task(&m, &d, |_| {}).await;
        domains.push(d);
    }
    for d in &domains {
        // Alternate which edge sees a task first.
        for c in [e1.client(), e2.client(), e1.client()] {
            assert_eq!(c.get(d, "/").await.expect("answer").status, 200);
        }
    }
    let placed = placement(&[&a, &b]).await;
    let tasks: BTreeSet<&String> = placed.iter().map(|(t, _)| t).collect();
    assert_eq!(
        placed.len(),
        8,
        "each task runs once, on one node: {placed:?}"
    );
    assert_eq!(tasks.len(), 8);
    let on_a = placed.iter().filter(|(_, n)| *n == a.id).count();
    assert!(
        on_a > 0 && on_a < 8,
        "rendezvous spreads tasks over both nodes: {placed:?}"
    );
    for x in [e1, e2] {
        x.stop().await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_the_next_node() {
    counter_image().await.expect("image");
    let m = master::spawn(fast_master()).await;
    let real = node::spawn(&m, |_| {}).await;
    // A node the master believes alive (it heartbeats) but whose port refuses connections.
    let beating = heartbeating_node(&m, "ghost", procs::free_addr()).await;
    // Health checks slow enough that the ghost is still "up" when requests come.
    let e = edge::spawn(&m, |c| c.health_interval_ms = 60_000).await;
    // Each new task prefers one of the two nodes by rendezvous hashing; register tasks until one
    // prefers the ghost (each does with probability ~1/2, so 40 tries miss with ~1e-12). Every
    // request must be answered 200 by the real node, the ghost's refusals retried.
    let mut retried = false;
    for i in 0..40 {
        let d = format!("{}-{i}.test", unique_id("retry"));
        task(&m, &d, |_| {}).await;
        let r = e.client().get(&d, "/headers").await.expect("answer");
        assert_eq!(r.status, 200, "{r:?}");
        let metrics = e.metrics().await;
        if metrics.contains("shadow_edge_retries_total{reason=\"connect\"}") {
            // The retry carries the id the edge gave the request, as a first try does.
            let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
            let id = seen["x-request-id"].as_str().unwrap_or_default();
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "the retried request's id: {seen}"
            );
            retried = true;
            break;
        }
    }
    assert!(
        retried,
        "no task preferred the ghost in 40 tries, or its refusal was not retried"
    );
    beating.abort();
    e.stop().await;
    real.stop().await;
}

#[tokio::test]
async fn a_killed_node_is_routed_around_and_comes_back() {
    counter_image().await.expect("image");
    let m = master::spawn(fast_master()).await;
    let (s3, probe) = s3::spawn_with_bucket().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (ida, idb) = (unique_id("na"), unique_id("nb"));
    let mut env = s3.env();
    env.extend([
        ("SHADOW_LEASE_TTL_MS", "1500".to_string()),
        ("SHADOW_STOP_GRACE_S", "1".to_string()),
        ("SHADOW_CHECKPOINT_INTERVAL_S", "1".to_string()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut na = procs::spawn_node(&m.url, &ida, &dir.path().join("a"), &env).await;
    let mut nb = procs::spawn_node(&m.url, &idb, &dir.path().join("b"), &env).await;
    let f = Follower::spawn(m.client.clone(), std::future::pending());
    f.synced().await;
    f.wait_until(|s| {
        [&ida, &idb]
            .iter()
            .all(|id| s.node(id).is_some_and(|n| n.healthy))
    })
    .await;
    let e = edge::spawn(&m, |_| {}).await;

    let d = format!("{}.test", unique_id("failover"));
    let t = task(&m, &d, |s| s["volume"] = json!({"kind": "s3"})).await;
    let c = e.client();
    for want in ["1", "2"] {
        let r = c.post(&d, "/count", "").await.expect("answer");
        assert_eq!((r.status, r.body.trim()), (200, want));
    }
    // The victim's data reaches S3 by its periodic checkpoints, not by a stop.
    s3::two_checkpoints_after(&probe, &t.id, s3::now_ms()).await;
    let lease = m.client.list_leases().await.expect("leases");
    let holder = lease
        .iter()
        .find(|l| l.task_id == t.id)
        .expect("lease")
        .node
        .clone();
    let (victim, survivor) = if holder == ida {
        (&mut na, &idb)
    } else {
        (&mut nb, &ida)
    };
    let victim_id = holder.clone();

    let killed_at = tokio::time::Instant::now();
    victim.kill9();
    // Keep asking through the edge; the app must answer again from the survivor once the dead
    // node's lease lapsed. Every answer is a response (503 while waiting), never a hang.
    let mut first_ok = None;
    for _ in 0..400 {
        let r = c.get(&d, "/").await.expect("the edge always answers");
        if r.status == 200 {
            first_ok = Some(killed_at.elapsed());
            assert_eq!(r.body.trim(), "2", "the count came back from S3");
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.headers.contains_key("retry-after"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_ok = first_ok.expect("the app answers again from the other node");
    eprintln!("failover: first 200 from the survivor {first_ok:?} after SIGKILL");
    let now = m.client.list_leases().await.expect("leases");
    assert_eq!(
        now.iter()
            .find(|l| l.task_id == t.id)
            .map(|l| l.node.as_str()),
        Some(survivor.as_str())
    );
    f.wait_until(|s| s.node(&victim_id).is_some_and(|n| !n.healthy))
        .await;

    // The dead node comes back with the same id: it removes what it left behind and rejoins.
    let again = procs::spawn_node(&m.url, &victim_id, &dir.path().join("again"), &env).await;
    f.wait_until(|s| s.node(&victim_id).is_some_and(|n| n.healthy))
        .await;
    let leftovers = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=shadow.node={victim_id}"),
        ])
        .output()
        .expect("docker");
    assert!(
        String::from_utf8_lossy(&leftovers.stdout).trim().is_empty(),
        "the restarted node removed its orphan"
    );
    // The edge's own checks see both nodes up again (no event to await: it polls /healthz).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !e.metrics().await.contains("shadow_edge_nodes_up 2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never saw the returned node up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(again);
    docker_rm_node(&ida);
    docker_rm_node(&idb);
    e.stop().await;
}

/// A self-signed certificate for `name`: (PEM cert path, PEM key path, DER).
fn cert_for(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("certificate");
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, ck.cert.pem()).expect("write cert");
    std::fs::write(&k, ck.signing_key.serialize_pem()).expect("write key");
    (c, k, ck.cert.der().to_vec())
}

#[tokio::test]
async fn https_picks_the_certificate_by_sni_and_tells_the_app() {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, ServerName},
    };
    counter_image().await.expect("image");
    let m = master::spawn(fast_master()).await;
    let n = node::spawn(&m, |_| {}).await;
    let dir = tempfile::tempdir().expect("tmp");
    let id = unique_id("tls");
    let (a, b) = (format!("a-{id}.test"), format!("b-{id}.test"));
    let (ca, ka, der_a) = cert_for(dir.path(), &a);
    let (cb, kb, der_b) = cert_for(dir.path(), &b);
    task(&m, &b, |s| s["volume"] = json!({"kind": "none"})).await;
    let e = edge::spawn(&m, |c| {
        c.tls_cert = vec![ca, cb];
        c.tls_key = vec![ka, kb];
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    for der in [&der_a, &der_b] {
        roots.add(CertificateDer::from(der.clone())).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    for (name, der) in [(&a, &der_a), (&b, &der_b)] {
        let tcp = tokio::net::TcpStream::connect(e.tls_addr.expect("tls"))
            .await
            .expect("connect");
        let tls = connector
            .connect(ServerName::try_from(name.clone()).expect("name"), tcp)
            .await
            .expect("handshake verifies the certificate for the SNI name");
        let presented = tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
        assert_eq!(&presented, der, "the certificate for {name}");
        if name == &b {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .expect("http over tls");
            tokio::spawn(conn);
            let req = http::Request::get("/headers")
                .header("host", name.as_str())
                .body(shadow_tests::http::empty())
                .expect("req");
            let resp = sender.send_request(req).await.expect("answer");
            assert_eq!(resp.status(), 200);
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let h: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(h["x-forwarded-proto"], "https", "{h}");
            assert_eq!(h["x-forwarded-host"], b.as_str(), "{h}");
        }
    }
    e.stop().await;
    n.stop().await;
}

/// What a stand-in node answers to `GET /plain` (fields the edge passes on unparsed) and to
/// `GET /holder` (a lease holder's field the client must not see).
const PLAIN: &str = "HTTP/1.1 200 OK\r\nX-App: One\r\nSet-Cookie: a=1\r\nx-spaced:  a  b \r\n\
                     set-cookie: b=2\r\nContent-Length: 2\r\n\r\nok";
const HOLDER: &str = "HTTP/1.1 200 OK\r\nX-App: One\r\nx-shadow-lease-holder: n9\r\n\
                      Content-Length: 2\r\n\r\nok";

/// A node stand-in on a raw socket: every request gets [`PLAIN`], or [`HOLDER`] for a path
/// with `/holder`, on kept connections.
async fn stand_in_node() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read_u8().await {
                            Ok(b) => head.push(b),
                            Err(_) => return,
                        }
                    }
                    let answer = if head.starts_with(b"GET /holder ") {
                        HOLDER
                    } else {
                        PLAIN
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `GET path` for `host` on `stream`; the answer's head (its 2-byte body checked).
async fn read_answer(stream: &mut tokio::net::TcpStream, host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("answer head"));
    }
    let mut body = [0; 2];
    stream.read_exact(&mut body).await.expect("body");
    assert_eq!(&body, b"ok");
    String::from_utf8(head).expect("utf-8")
}

#[tokio::test]
async fn an_answer_crosses_the_edge_as_the_app_wrote_it_but_for_the_lease_holder() {
    let m = master::spawn(fast_master()).await;
    let beating = heartbeating_node(&m, "stand-in", stand_in_node().await).await;
    let e = edge::spawn(&m, |_| {}).await;
    let d = format!("{}.test", unique_id("plain"));
    task(&m, &d, |_| {}).await;
    // The edge learns of the task from the master: ask until it routes it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = e.client().get(&d, "/plain").await.expect("answer");
        if r.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never routed the task: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut stream = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    // Twice on one connection: names in their case and order, odd spacing kept, one length.
    for _ in 0..2 {
        let head = read_answer(&mut stream, &d, "/plain").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(
                "\r\nX-App: One\r\nSet-Cookie: a=1\r\nx-spaced:  a  b \r\nset-cookie: b=2\r\nContent-Length: 2\r\n"
            ),
            "{head}"
        );
        assert_eq!(
            head.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{head}"
        );
        assert_eq!(
            head.to_ascii_lowercase().matches("\r\ndate: ").count(),
            1,
            "{head}"
        );
    }
    let head = read_answer(&mut stream, &d, "/holder")
        .await
        .to_ascii_lowercase();
    assert!(head.contains("\r\nx-app: one\r\n"), "{head}");
    assert!(
        !head.contains("lease-holder"),
        "the holder reached the client: {head}"
    );

    beating.abort();
    e.stop().await;
}
