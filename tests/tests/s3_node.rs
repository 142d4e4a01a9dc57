//! `s3` volumes end to end: real node proxies (in-process and as processes), a real master, the
//! real Docker Engine and a real S3 server (`s3s-fs` on loopback). The counter app keeps its
//! count in `/data`; these tests check that the count follows the app across reaps, nodes and
//! a node's death, and that two nodes never run the app at once.

use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

use serde_json::json;
use shadow_nodeproxy::handler::HOLDER_HEADER;
use shadow_tests::{
    fixtures::{counter_task, docker_rm_node, domain, until_released},
    http::{Client, Reply},
    image::counter_image,
    master::{self, MasterHandle, MasterOptions},
    node::{self, unique_id, NodeHandle},
    procs,
    s3::{self, S3Server},
};
use tokio::time::Instant;

async fn s3_node(m: &MasterHandle, s3: &S3Server) -> NodeHandle {
    node::spawn(m, |c| s3.configure(c)).await
}

fn body(r: &Reply) -> (u16, &str) {
    (r.status, r.body.trim())
}

#[tokio::test]
async fn the_count_survives_a_reap_on_the_same_node_and_on_another() {
    counter_image().await.expect("image");
    let (s3, probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(MasterOptions::default()).await;
    let (a, b) = (s3_node(&m, &s3).await, s3_node(&m, &s3).await);
    let d = domain("s3reap");
    let t = counter_task(&m, &d, "s3", |s| s["idle_timeout_s"] = json!(1)).await;
    let (ca, cb) = (Client::new(a.addr), Client::new(b.addr));

    assert_eq!(
        body(&ca.post(&d, "/count", "").await.expect("req")),
        (200, "1")
    );
    assert_eq!(
        body(&ca.post(&d, "/count", "").await.expect("req")),
        (200, "2")
    );
    until_released(&m, &t.id).await;
    assert!(a.containers().await.is_empty(), "reaped");
    assert!(
        probe.pointer(&t.id).await.expect("read").is_some(),
        "the data was written back to S3"
    );

    assert_eq!(
        body(&ca.get(&d, "/").await.expect("req")),
        (200, "2"),
        "same node"
    );
    until_released(&m, &t.id).await;

    // The other node has never seen this task: its data can only come from S3.
    assert!(!b.dir.path().join("s3").join(&t.id).exists());
    assert_eq!(
        body(&cb.post(&d, "/count", "").await.expect("req")),
        (200, "3"),
        "another node"
    );
    assert!(a.containers().await.is_empty());
    a.stop().await;
    b.stop().await;
}

/// Sends `req` to `node`; a 503 naming the lease holder is followed to the holder once, as the
/// edge does.
async fn post_following_holder(
    nodes: &HashMap<String, SocketAddr>,
    first: SocketAddr,
    d: &str,
) -> Reply {
    let r = Client::new(first)
        .post(d, "/count", "")
        .await
        .expect("answered");
    let Some(holder) = r.headers.get(HOLDER_HEADER) else {
        return r;
    };
    assert_eq!(r.status, 503, "{r:?}");
    let holder = holder.to_str().expect("ascii");
    let addr = nodes
        .get(holder)
        .unwrap_or_else(|| panic!("the holder {holder} is one of the two nodes"));
    Client::new(*addr)
        .post(d, "/count", "")
        .await
        .expect("answered")
}

#[tokio::test]
async fn two_nodes_racing_for_a_cold_app_run_it_once() {
    counter_image().await.expect("image");
    let (s3, _probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(MasterOptions::default()).await;
    let (a, b) = (s3_node(&m, &s3).await, s3_node(&m, &s3).await);
    let nodes: HashMap<String, SocketAddr> =
        [(a.id.clone(), a.addr), (b.id.clone(), b.addr)].into();
    let d = domain("s3race");
    counter_task(&m, &d, "s3", |_| {}).await;

    // 40 first requests at once, half to each node.
    let answers = futures_util::future::join_all((0..40).map(|i| {
        let first = if i % 2 == 0 { a.addr } else { b.addr };
        let (nodes, d) = (&nodes, d.clone());
        async move { post_following_holder(nodes, first, &d).await }
    }))
    .await;
    let mut counts: Vec<u64> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{r:?}");
            r.body.trim().parse().expect("a count")
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=40).collect::<Vec<u64>>(),
        "every increment reached the one running app"
    );
    let running = a.containers().await.len() + b.containers().await.len();
    assert_eq!(running, 1, "one container across both nodes");
    let leases = m.client.list_leases().await.expect("leases");
    assert_eq!(leases.len(), 1);
    let holder_has_it = if leases[0].node == a.id { &a } else { &b };
    assert_eq!(holder_has_it.containers().await.len(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_killed_node_s_app_restarts_elsewhere_from_its_last_checkpoint() {
    counter_image().await.expect("image");
    let (s3, probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(MasterOptions::default()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let victim_id = unique_id("s3victim");
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("SHADOW_CHECKPOINT_INTERVAL_S", "1".into()));
    env.push(("SHADOW_LEASE_TTL_MS", "1500".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut victim = procs::spawn_node(&m.url, &victim_id, &dir.path().join("victim"), &env).await;
    let survivor = s3_node(&m, &s3).await;

    let d = domain("s3kill");
    let t = counter_task(&m, &d, "s3", |_| {}).await;
    let cv = Client::new(victim.addr);
    let ready = Instant::now() + Duration::from_secs(20);
    let first = loop {
        // The process may still be registering.
        match cv.post(&d, "/count", "").await {
            Ok(r) if r.status == 200 => break r,
            other => assert!(Instant::now() < ready, "the victim never served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.body.trim(), "1");
    for want in ["2", "3"] {
        assert_eq!(
            body(&cv.post(&d, "/count", "").await.expect("req")),
            (200, want)
        );
    }
    s3::two_checkpoints_after(&probe, &t.id, s3::now_ms()).await;

    victim.kill9();
    let cs = Client::new(survivor.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = cs.get(&d, "/").await.expect("the survivor answers");
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(
            r.headers.get(HOLDER_HEADER).and_then(|h| h.to_str().ok()),
            Some(victim_id.as_str()),
            "refused only while the dead node's lease lasts"
        );
        assert!(Instant::now() < deadline, "the lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        r.body.trim(),
        "3",
        "the app came back from its last checkpoint"
    );
    let lease = m.client.list_leases().await.expect("leases");
    assert_eq!(lease[0].node, survivor.id);
    docker_rm_node(&victim_id);
    survivor.stop().await;
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn an_unreachable_store_gives_503_and_starts_no_container() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let s3_port = closed_port();
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let n = node::spawn(&m, |c| {
        c.s3_endpoint = Some(endpoint.clone());
        c.s3_bucket = Some("shadow-test".into());
        c.s3_region = Some(s3::REGION.into());
        c.s3_path_style = true;
        c.s3_access_key = Some(s3::ACCESS_KEY.into());
        c.s3_secret_key = Some(s3::SECRET_KEY.into());
    })
    .await;
    let d = domain("s3down");
    let t = counter_task(&m, &d, "s3", |_| {}).await;
    let c = Client::new(n.addr);
    let answers = futures_util::future::join_all((0..10).map(|_| {
        let (c, d) = (c.clone(), d.clone());
        async move { c.get(&d, "/").await.expect("answered") }
    }))
    .await;
    for r in &answers {
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.headers.contains_key("retry-after"), "{r:?}");
        // The public answer names the app, and leaves the task id and the store's address to
        // the node's log.
        assert!(r.body.contains("app counter could not start"), "{}", r.body);
        assert!(!r.body.contains(&t.id), "{}", r.body);
        assert!(!r.body.contains(&s3_port.to_string()), "{}", r.body);
    }
    assert!(n.containers().await.is_empty(), "no container was made");
    until_released(&m, &t.id).await;
    assert!(
        !Path::new(&n.dir.path().join("s3").join(&t.id)).exists()
            || std::fs::read_dir(n.dir.path().join("s3").join(&t.id))
                .expect("dir")
                .next()
                .is_none(),
        "nothing half-restored is left"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_volume_kind_change_is_refused_then_migrated_with_the_data() {
    counter_image().await.expect("image");
    let (s3, probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(MasterOptions::default()).await;
    let a = s3_node(&m, &s3).await;
    let d = domain("migrate");
    let t = counter_task(&m, &d, "local", |s| s["idle_timeout_s"] = json!(1)).await;
    let ca = Client::new(a.addr);
    for want in ["1", "2"] {
        assert_eq!(
            body(&ca.post(&d, "/count", "").await.expect("req")),
            (200, want)
        );
    }
    until_released(&m, &t.id).await;

    let raw = m.raw();
    let path = format!("/tasks/{}", t.id);
    let (_, mut spec) = raw.send("GET", &path, None).await;
    spec.as_object_mut().expect("task").remove("id");
    spec["volume"]["kind"] = json!("s3");
    // Without asking for a migration: refused, and the task is unchanged.
    let (st, err) = raw.send("PUT", &path, Some(&spec.to_string())).await;
    assert_eq!(
        (st, err["field"].as_str()),
        (409, Some("volume.kind")),
        "{err}"
    );
    assert!(
        err["error"]
            .as_str()
            .expect("error")
            .contains("?migrate=true"),
        "{err}"
    );
    // The bookkeeping field is the master's.
    let mut forged = spec.clone();
    forged["volume"]["migrating_from"] = json!("ebs");
    let (st, err) = raw
        .send(
            "PUT",
            &format!("{path}?migrate=true"),
            Some(&forged.to_string()),
        )
        .await;
    assert_eq!(
        (st, err["field"].as_str()),
        (400, Some("volume.migrating_from")),
        "{err}"
    );

    let (st, moved) = raw
        .send(
            "PUT",
            &format!("{path}?migrate=true"),
            Some(&spec.to_string()),
        )
        .await;
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["volume"]["migrating_from"], "local");
    // The next start moves the data: the count goes on from 2, and the migration is over.
    assert_eq!(
        body(&ca.post(&d, "/count", "").await.expect("req")),
        (200, "3")
    );
    let (_, now) = raw.send("GET", &path, None).await;
    assert!(now["volume"].get("migrating_from").is_none(), "{now}");
    until_released(&m, &t.id).await;
    assert!(
        probe.pointer(&t.id).await.expect("read").is_some(),
        "written to S3"
    );

    // A node that never had the local volume finds the data in S3, and moves it back into a
    // local volume of its own.
    let b = s3_node(&m, &s3).await;
    let cb = Client::new(b.addr);
    spec["volume"]["kind"] = json!("local");
    let (st, back) = raw
        .send(
            "PUT",
            &format!("{path}?migrate=true"),
            Some(&spec.to_string()),
        )
        .await;
    assert_eq!(st, 200, "{back}");
    assert_eq!(
        body(&cb.post(&d, "/count", "").await.expect("req")),
        (200, "4")
    );
    until_released(&m, &t.id).await;
    assert_eq!(body(&cb.get(&d, "/").await.expect("req")), (200, "4"));
    assert!(b.dir.path().join("volumes").join(&t.id).exists());
    a.stop().await;
    b.stop().await;
}
