//! The master's API through real HTTP on loopback, with real SQLite under a temp dir.

use std::time::Duration;

use serde_json::{json, Value};
use shadow_common::{
    client::ClientError,
    follower::Follower,
    node::{Heartbeat, NodeRegistration},
    task::{TaskSpec, VolumeKind},
};
use shadow_tests::master::{spawn, spawn_in, MasterOptions, TOKEN};

fn spec(name: &str, domain: &str) -> Value {
    json!({"name": name, "domains": [domain], "image": "shadow-test/counter:latest"})
}

#[tokio::test]
async fn task_life_cycle_through_http() {
    let m = spawn(MasterOptions::default()).await;
    let raw = m.raw();

    let (st, created) = raw
        .send(
            "POST",
            "/tasks/",
            Some(&spec("blog", "Blog.Example.com").to_string()),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().expect("server-made id").to_string();
    assert_eq!(
        created["domains"],
        json!(["blog.example.com"]),
        "domains are stored lower-case"
    );
    assert_eq!(created["port"], 8000);
    assert_eq!(created["idle_timeout_s"], 300);
    assert_eq!(created["start_timeout_s"], 60);
    assert_eq!(created["cold_start"], "hold");
    assert_eq!(created["volume"]["kind"], "none");

    let (st, got) = raw.send("GET", &format!("/tasks/{id}"), None).await;
    assert_eq!((st, &got), (200, &created));
    let (st, list) = raw.send("GET", "/tasks/", None).await;
    // The list adds each task's one-word state: no node has reported this one.
    let mut listed = created.clone();
    listed["state"] = json!("idle");
    assert_eq!((st, list), (200, json!([listed])));
    let (st, by_domain) = raw
        .send("GET", "/tasks/by-domain/blog.example.com", None)
        .await;
    assert_eq!((st, by_domain["id"].as_str()), (200, Some(id.as_str())));

    let mut updated = spec("blog", "blog.example.com");
    updated["domains"] = json!(["blog.example.com", "www.blog.example.com"]);
    updated["idle_timeout_s"] = json!(30);
    let (st, after) = raw
        .send("PUT", &format!("/tasks/{id}"), Some(&updated.to_string()))
        .await;
    assert_eq!(st, 200, "{after}");
    assert_eq!(after["idle_timeout_s"], 30);
    assert_eq!(after["id"].as_str(), Some(id.as_str()));
    let (st, _) = raw
        .send("GET", "/tasks/by-domain/www.blog.example.com", None)
        .await;
    assert_eq!(st, 200);

    let (st, _) = raw.send("DELETE", &format!("/tasks/{id}"), None).await;
    assert_eq!(st, 204);
    let (st, body) = raw.send("GET", &format!("/tasks/{id}"), None).await;
    assert_eq!(st, 404);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(&id)),
        "{body}"
    );
    let (st, _) = raw
        .send("GET", "/tasks/by-domain/blog.example.com", None)
        .await;
    assert_eq!(st, 404);
    let (st, _) = raw.send("DELETE", &format!("/tasks/{id}"), None).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn invalid_specs_get_400_naming_the_field_and_change_nothing() {
    let m = spawn(MasterOptions::default()).await;
    let raw = m.raw();
    let base = spec("a", "a.example.com");
    let with = |k: &str, v: Value| {
        let mut s = base.clone();
        s[k] = v;
        s
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("domains", json!(["not a host"])), "domains[0]"),
        (with("domains", json!(["-bad.example.com"])), "domains[0]"),
        (with("domains", json!([])), "domains"),
        (with("image", json!("")), "image"),
        (with("volume", json!({"kind": "floppy"})), "volume.kind"),
        (
            with("volume", json!({"kind": "s3", "size_gb": 0})),
            "volume.size_gb",
        ),
        (
            with("resources", json!({"memory_mb": 1})),
            "resources.memory_mb",
        ),
        (with("resources", json!({"cpus": 0})), "resources.cpus"),
        (with("resources", json!({"pids": -1})), "resources.pids"),
        (with("start_timeout_s", json!(0)), "start_timeout_s"),
        (with("idle_timeout_s", json!(99999999)), "idle_timeout_s"),
        (with("cold_start", json!("maybe")), "cold_start"),
        (with("health", json!({"path": "healthz"})), "health.path"),
        (with("surprise", json!(1)), "surprise"),
        (with("user", json!("root; rm -rf /")), "user"),
        (with("hsts_max_age_s", json!(99_999_999)), "hsts_max_age_s"),
        (json!({"domains": ["x.example.com"], "image": "x"}), "name"),
    ];
    for (body, field) in cases {
        let (st, err) = raw.send("POST", "/tasks/", Some(&body.to_string())).await;
        assert_eq!(st, 400, "{body} -> {err}");
        assert_eq!(err["field"], field, "{body} -> {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{err}"
        );
    }
    let (st, err) = raw.send("POST", "/tasks/", Some("{not json")).await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(err["field"], "body", "a syntax error is the body's: {err}");
    // A JSON array with the fields in order would deserialize as a struct: refused.
    let array = json!(["a", ["a.example.com"], "img"]).to_string();
    let (st, err) = raw.send("POST", "/tasks/", Some(&array)).await;
    assert_eq!((st, err["field"].as_str()), (400, Some("body")), "{err}");
    // Too large is 413 and without a length is 411, not another route's 405.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (st, err) = raw.send("POST", "/tasks/", Some(&big)).await;
    assert_eq!(st, 413, "{err}");
    let chunked = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = raw.base.trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let body = base.to_string();
        let req = format!(
            "POST /tasks/ HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(chunked.starts_with("HTTP/1.1 411"), "{chunked}");
    assert_eq!(raw.send("GET", "/tasks/", None).await, (200, json!([])));

    // Changing a stateful task's volume kind would strand its data: 409, nothing changed.
    let (_, local) = raw
        .send(
            "POST",
            "/tasks/",
            Some(&json!({"name": "k", "domains": ["kind.example.com"], "image": "x", "volume": {"kind": "local"}}).to_string()),
        )
        .await;
    let kid = local["id"].as_str().expect("id");
    let mut to_s3 = local.clone();
    to_s3["volume"] = json!({"kind": "s3"});
    to_s3.as_object_mut().expect("object").remove("id");
    let (st, err) = raw
        .send("PUT", &format!("/tasks/{kid}"), Some(&to_s3.to_string()))
        .await;
    assert_eq!(
        (st, err["field"].as_str()),
        (409, Some("volume.kind")),
        "{err}"
    );
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("local to s3")),
        "{err}"
    );
    assert_eq!(
        raw.send("GET", &format!("/tasks/{kid}"), None).await,
        (200, local.clone())
    );
    raw.send("DELETE", &format!("/tasks/{kid}"), None).await;

    // An invalid update leaves the stored task as it was.
    let (_, t) = raw.send("POST", "/tasks/", Some(&base.to_string())).await;
    let id = t["id"].as_str().expect("id");
    let (st, err) = raw
        .send(
            "PUT",
            &format!("/tasks/{id}"),
            Some(&with("image", json!("")).to_string()),
        )
        .await;
    assert_eq!((st, err["field"].as_str()), (400, Some("image")));
    assert_eq!(
        raw.send("GET", &format!("/tasks/{id}"), None).await,
        (200, t)
    );
}

#[tokio::test]
async fn a_domain_belongs_to_one_task() {
    let m = spawn(MasterOptions::default()).await;
    let raw = m.raw();
    let (_, a) = raw
        .send(
            "POST",
            "/tasks/",
            Some(&spec("a", "a.example.com").to_string()),
        )
        .await;
    let (_, b) = raw
        .send(
            "POST",
            "/tasks/",
            Some(&spec("b", "b.example.com").to_string()),
        )
        .await;

    let (st, err) = raw
        .send(
            "POST",
            "/tasks/",
            Some(&spec("c", "A.example.com").to_string()),
        )
        .await;
    assert_eq!(
        (st, err["field"].as_str()),
        (409, Some("domains[0]")),
        "{err}"
    );

    let b_id = b["id"].as_str().expect("id");
    let (st, err) = raw
        .send(
            "PUT",
            &format!("/tasks/{b_id}"),
            Some(&spec("b", "a.example.com").to_string()),
        )
        .await;
    assert_eq!(st, 409, "{err}");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains(a["id"].as_str().expect("id"))),
        "{err}"
    );

    // An update may keep its own domain.
    let mut keep = spec("b2", "b.example.com");
    keep["env"] = json!({"MODE": "prod"});
    let (st, kept) = raw
        .send("PUT", &format!("/tasks/{b_id}"), Some(&keep.to_string()))
        .await;
    assert_eq!((st, kept["name"].as_str()), (200, Some("b2")));
    assert_eq!(
        raw.send("GET", "/tasks/", None)
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn the_api_needs_the_token_but_health_and_metrics_do_not() {
    let m = spawn(MasterOptions::default()).await;
    for raw in [m.raw().without_token(), m.raw().with_token("wrong")] {
        for (method, path) in [
            ("GET", "/tasks/"),
            ("POST", "/tasks/"),
            ("GET", "/nodes/"),
            ("GET", "/watch?since=0&timeout_ms=10"),
        ] {
            let (st, err) = raw.send(method, path, Some("{}")).await;
            assert_eq!(st, 401, "{method} {path}");
            assert!(
                err["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("SHADOW_API_TOKEN")),
                "{err}"
            );
        }
    }
    let anon = m.raw().without_token();
    assert_eq!(anon.send("GET", "/healthz", None).await.0, 200);
    let (st, text) = anon.send("GET", "/metrics", None).await;
    assert_eq!(st, 200);
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("shadow_master_requests_total")),
        "{text}"
    );
    assert_eq!(m.raw().send("GET", "/tasks/", None).await.0, 200);
    let (st, err) = m.raw().send("GET", "/no/such/route", None).await;
    assert_eq!(st, 404, "{err}");
}

#[tokio::test]
async fn without_a_token_the_master_refuses_a_public_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let config = shadow_master::MasterConfig::new(dir.path().to_path_buf());
    let err = shadow_master::run(config, listener, async {})
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("SHADOW_API_TOKEN"), "{err}");
}

async fn register(m: &shadow_tests::master::MasterHandle, id: &str) {
    m.client
        .register_node(&NodeRegistration {
            id: id.into(),
            address: "127.0.0.1:7071".into(),
            capacity: 10,
            volume_kinds: None,
        })
        .await
        .expect("register");
}

async fn stateful_task(m: &shadow_tests::master::MasterHandle, domain: &str) -> String {
    let mut s = spec("db", domain);
    s["volume"] = json!({"kind": "local"});
    let spec: TaskSpec = serde_json::from_value(s).expect("spec");
    m.client.create_task(&spec).await.expect("create").id
}

#[tokio::test]
async fn two_nodes_contend_for_one_lease_and_tokens_grow() {
    let m = spawn(MasterOptions::default()).await;
    register(&m, "node-a").await;
    register(&m, "node-b").await;
    let task = stateful_task(&m, "db.example.com").await;
    let ttl = Duration::from_secs(30);

    let a = m
        .client
        .acquire_lease(&task, "node-a", ttl)
        .await
        .expect("a gets it");
    match m.client.acquire_lease(&task, "node-b", ttl).await {
        Err(ClientError::LeaseConflict { holder, .. }) => {
            assert_eq!(holder.as_deref(), Some("node-a"))
        }
        other => panic!("node-b must get 409 with the holder, got {other:?}"),
    }
    let renewed = m
        .client
        .renew_lease(&task, a.token, ttl)
        .await
        .expect("renew");
    assert_eq!(renewed.token, a.token, "renewal keeps the token");
    assert!(renewed.expires_at >= a.expires_at);
    // A stale token can neither renew nor release.
    assert!(matches!(
        m.client.release_lease(&task, a.token + 1000).await,
        Err(ClientError::LeaseConflict { .. })
    ));
    m.client
        .release_lease(&task, a.token)
        .await
        .expect("release");
    let b = m
        .client
        .acquire_lease(&task, "node-b", ttl)
        .await
        .expect("b after release");
    assert!(
        b.token > a.token,
        "fencing token grows: {} then {}",
        a.token,
        b.token
    );
    assert!(matches!(
        m.client.renew_lease(&task, a.token, ttl).await,
        Err(ClientError::LeaseConflict { .. })
    ));

    let raw = m.raw();
    let (st, err) = raw
        .send(
            "POST",
            &format!("/leases/{task}"),
            Some(r#"{"node":"node-c","ttl_ms":1000}"#),
        )
        .await;
    assert_eq!(
        (st, err["field"].as_str()),
        (400, Some("node")),
        "unregistered node: {err}"
    );
    let (st, err) = raw
        .send(
            "POST",
            &format!("/leases/{task}"),
            Some(r#"{"node":"node-a","ttl_ms":5}"#),
        )
        .await;
    assert_eq!((st, err["field"].as_str()), (400, Some("ttl_ms")), "{err}");
    let (st, _) = raw
        .send(
            "POST",
            "/leases/no-such-task",
            Some(r#"{"node":"node-a","ttl_ms":1000}"#),
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn a_lapsed_lease_goes_to_the_next_node_with_a_larger_token() {
    let m = spawn(MasterOptions {
        heartbeat_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    register(&m, "node-a").await;
    register(&m, "node-b").await;
    let task = stateful_task(&m, "lapse.example.com").await;
    let follower = Follower::spawn(m.client.clone(), std::future::pending());
    follower.synced().await;

    let a = m
        .client
        .acquire_lease(&task, "node-a", Duration::from_millis(300))
        .await
        .expect("a");
    follower
        .wait_until(|s| s.lease(&task).is_some_and(|l| l.token == a.token))
        .await;
    // The master announces the lapse on its watch; no sleeping here.
    follower.wait_until(|s| s.lease(&task).is_none()).await;
    let b = m
        .client
        .acquire_lease(&task, "node-b", Duration::from_secs(30))
        .await
        .expect("b");
    assert!(b.token > a.token);
    assert!(matches!(
        m.client
            .renew_lease(&task, a.token, Duration::from_secs(1))
            .await,
        Err(ClientError::LeaseConflict { .. })
    ));
}

#[tokio::test]
async fn watch_blocks_until_a_change_and_returns_changes_in_order() {
    let m = spawn(MasterOptions::default()).await;
    let first = m
        .client
        .watch(None, 0, Duration::from_millis(10))
        .await
        .expect("watch");
    assert!(first.reset, "the first answer is the whole state");

    // Nothing new: the poll waits its full timeout and reports no events.
    let idle = m
        .client
        .watch(
            Some(&first.epoch),
            first.revision,
            Duration::from_millis(200),
        )
        .await
        .expect("watch");
    assert!(!idle.reset && idle.events.is_empty());
    assert_eq!(idle.revision, first.revision);

    let client = m.client.clone();
    let (epoch, rev) = (first.epoch.clone(), first.revision);
    let waiting = tokio::spawn(async move {
        client
            .watch(Some(&epoch), rev, Duration::from_secs(30))
            .await
    });
    // Wait until the master reports the poll as waiting (its own gauge), then make a change.
    let raw = m.raw();
    loop {
        let (_, text) = raw.send("GET", "/metrics", None).await;
        if text
            .as_str()
            .is_some_and(|t| t.contains("shadow_master_watchers 1"))
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    let t1 = m
        .client
        .create_task(&serde_json::from_value(spec("one", "one.example.com")).expect("spec"))
        .await
        .expect("create");
    let woke = waiting.await.expect("join").expect("watch");
    assert!(!woke.reset);
    assert!(woke.revision > rev);
    assert!(
        matches!(&woke.events[0], shadow_common::watch::WatchEvent::TaskPut { task } if task.id == t1.id)
    );

    let t2 = m
        .client
        .create_task(&serde_json::from_value(spec("two", "two.example.com")).expect("spec"))
        .await
        .expect("create");
    m.client.delete_task(&t1.id).await.expect("delete");
    let next = m
        .client
        .watch(Some(&first.epoch), woke.revision, Duration::from_secs(5))
        .await
        .expect("watch");
    let kinds: Vec<String> = next
        .events
        .iter()
        .map(|e| match e {
            shadow_common::watch::WatchEvent::TaskPut { task } => format!("put {}", task.spec.name),
            shadow_common::watch::WatchEvent::TaskDeleted { id } if *id == t1.id => {
                "delete one".into()
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec!["put two".to_string(), "delete one".to_string()]);
    assert_eq!(t2.spec.name, "two");
}

#[tokio::test]
async fn nodes_turn_unhealthy_after_three_missed_heartbeats() {
    let m = spawn(MasterOptions {
        heartbeat_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    register(&m, "node-a").await;
    let hb = m
        .client
        .heartbeat(
            "node-a",
            &Heartbeat {
                running: vec!["t1".into()],
                load: 0.25,
            },
        )
        .await
        .expect("heartbeat");
    assert!(hb.healthy);
    assert_eq!(hb.running, vec!["t1".to_string()]);
    let follower = Follower::spawn(m.client.clone(), std::future::pending());
    follower
        .wait_until(|s| s.node("node-a").is_some_and(|n| !n.healthy))
        .await;
    let listed = m.client.list_nodes().await.expect("list");
    assert!(!listed[0].healthy);
    // A heartbeat brings it back.
    let back = m
        .client
        .heartbeat("node-a", &Heartbeat::default())
        .await
        .expect("hb");
    assert!(back.healthy);
    assert!(matches!(
        m.client.heartbeat("ghost", &Heartbeat::default()).await,
        Err(ClientError::Api { status, .. }) if status == 404
    ));
}

/// The ids of the nodes the master lists, sorted.
async fn node_ids(m: &shadow_tests::master::MasterHandle) -> Vec<String> {
    let mut ids: Vec<String> = m
        .client
        .list_nodes()
        .await
        .expect("list nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn only_a_dead_node_can_be_deleted_and_it_stays_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let opts = || MasterOptions {
        heartbeat_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let m = spawn_in(dir, opts()).await;
    register(&m, "node-a").await;
    register(&m, "node-b").await;
    let api_status = |r: Result<(), ClientError>| match r {
        Ok(()) => 204,
        Err(ClientError::Api { status, .. }) => status.as_u16(),
        Err(e) => panic!("{e}"),
    };
    let (st, body) = m.raw().send("DELETE", "/nodes/node-a", None).await;
    assert_eq!(st, 409, "a healthy node is refused: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("stop its shadow-nodeproxy first")),
        "says what to do: {body}"
    );

    let follower = Follower::spawn(m.client.clone(), std::future::pending());
    follower
        .wait_until(|s| s.node("node-a").is_some_and(|n| !n.healthy))
        .await;
    assert_eq!(api_status(m.client.delete_node("node-a").await), 204);
    follower.wait_until(|s| s.node("node-a").is_none()).await;
    assert_eq!(node_ids(&m).await, ["node-b"]);
    assert_eq!(api_status(m.client.delete_node("node-a").await), 404);

    // Gone for good: not back after a restart on the same data dir.
    let dir = m.stop().await;
    let m = spawn_in(dir, opts()).await;
    assert_eq!(node_ids(&m).await, ["node-b"]);
}

#[tokio::test]
async fn a_restarted_master_keeps_tasks_nodes_and_the_lease_generation() {
    let m = spawn(MasterOptions::default()).await;
    register(&m, "node-a").await;
    register(&m, "node-b").await;
    let task = stateful_task(&m, "keep.example.com").await;
    if !shadow_tests::postgres::wanted() {
        // Tasks carry secrets in their env: the database is its owner's only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(m.dir.path().join("state.db"))
            .expect("state.db")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "state.db mode {mode:o}");
    }
    let a = m
        .client
        .acquire_lease(&task, "node-a", Duration::from_secs(60))
        .await
        .expect("a");
    let before = m.client.list_tasks().await.expect("tasks");

    let dir = m.stop().await;
    let m = spawn_in(dir, MasterOptions::default()).await;
    assert_eq!(m.client.list_tasks().await.expect("tasks"), before);
    let nodes: Vec<String> = m
        .client
        .list_nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(nodes, vec!["node-a".to_string(), "node-b".to_string()]);
    // The lease itself survived: node-b still may not take it.
    assert!(matches!(
        m.client.acquire_lease(&task, "node-b", Duration::from_secs(1)).await,
        Err(ClientError::LeaseConflict { holder: Some(h), .. }) if h == "node-a"
    ));
    m.client
        .release_lease(&task, a.token)
        .await
        .expect("release with the old token");
    let b = m
        .client
        .acquire_lease(&task, "node-b", Duration::from_secs(1))
        .await
        .expect("b");
    assert!(
        b.token > a.token,
        "generation survives a restart: {} then {}",
        a.token,
        b.token
    );
    let _ = TOKEN;
}

#[tokio::test]
async fn named_locks_need_no_task_and_exclude_each_other() {
    let m = spawn(MasterOptions::default()).await;
    let ttl = Duration::from_secs(5);
    let a = m
        .client
        .acquire_lease("_replace-nodes", "edge-a", ttl)
        .await
        .expect("edge-a locks");
    assert!(matches!(
        m.client.acquire_lease("_replace-nodes", "edge-b", ttl).await,
        Err(ClientError::LeaseConflict { holder: Some(h), .. }) if h == "edge-a"
    ));
    m.client
        .release_lease("_replace-nodes", a.token)
        .await
        .expect("release");
    m.client
        .acquire_lease("_replace-nodes", "edge-b", ttl)
        .await
        .expect("edge-b after");
    let (st, err) = m
        .raw()
        .send(
            "POST",
            "/leases/_replace-nodes",
            Some(r#"{"node":"bad id!","ttl_ms":1000}"#),
        )
        .await;
    assert_eq!((st, err["field"].as_str()), (400, Some("node")), "{err}");
}

#[tokio::test]
async fn acme_records_are_kept_checked_and_the_first_account_wins() {
    let m = spawn(MasterOptions::default()).await;
    let raw = m.raw();
    // A record must be PUT at its own URL.
    let status = json!({"kind": "status", "domain": "a.example", "failures": 2,
        "last_error": "refused", "next_attempt": 100, "updated_at": 40});
    let (st, err) = raw
        .send("PUT", "/acme/status/b.example", Some(&status.to_string()))
        .await;
    assert_eq!((st, err["field"].as_str()), (400, Some("body")), "{err}");
    let (st, _) = raw
        .send("PUT", "/acme/status/a.example", Some(&status.to_string()))
        .await;
    assert_eq!(st, 200);
    let (st, err) = raw.send("GET", "/acme/keys/a.example", None).await;
    assert_eq!((st, err["field"].as_str()), (400, Some("kind")), "{err}");

    // The first account stays; a different one is refused and changes nothing.
    let first =
        json!({"id": "https://ca/acct/1", "key_pkcs8": "k1", "directory": "https://ca/dir"});
    let second =
        json!({"id": "https://ca/acct/2", "key_pkcs8": "k2", "directory": "https://ca/dir"});
    assert_eq!(
        raw.send("PUT", "/acme/account", Some(&first.to_string()))
            .await
            .0,
        200
    );
    assert_eq!(
        raw.send("PUT", "/acme/account", Some(&second.to_string()))
            .await
            .0,
        409
    );
    assert_eq!(
        raw.send("GET", "/acme/account", None).await,
        (200, first.clone())
    );

    // Both survive a restart; /certificates shows the status without the record's kind.
    let dir = m.stop().await;
    let m = spawn_in(dir, MasterOptions::default()).await;
    assert_eq!(
        m.raw().send("GET", "/acme/account", None).await,
        (200, first)
    );
    let (_, list) = m.raw().send("GET", "/certificates", None).await;
    assert_eq!(list[0]["domain"], "a.example");
    assert_eq!(list[0]["last_error"], "refused");
    assert!(list[0].get("kind").is_none(), "{list}");
}

#[tokio::test]
async fn a_volume_kind_no_registered_node_can_run_is_422() {
    let m = spawn(MasterOptions::default()).await;
    let raw = m.raw();
    let with_kind = |kind: &str, domain: &str| {
        let mut s = spec("app", domain);
        s["volume"] = json!({"kind": kind});
        s.to_string()
    };
    // No node yet: nothing to judge by, accepted.
    assert_eq!(
        raw.send("POST", "/tasks/", Some(&with_kind("s3", "a.example")))
            .await
            .0,
        201
    );
    m.client
        .register_node(&NodeRegistration {
            id: "local-only".into(),
            address: "127.0.0.1:7071".into(),
            capacity: 10,
            volume_kinds: Some(vec![VolumeKind::Local]),
        })
        .await
        .expect("register");
    let (st, err) = raw
        .send("POST", "/tasks/", Some(&with_kind("ebs", "b.example")))
        .await;
    assert_eq!(
        (st, err["field"].as_str()),
        (422, Some("volume.kind")),
        "{err}"
    );
    assert!(
        err["error"].as_str().expect("error").contains("ebs"),
        "{err}"
    );
    assert_eq!(
        raw.send("POST", "/tasks/", Some(&with_kind("local", "c.example")))
            .await
            .0,
        201
    );
    assert_eq!(
        raw.send("POST", "/tasks/", Some(&with_kind("none", "d.example")))
            .await
            .0,
        201
    );
    // The node list shows what each node can run.
    let (_, nodes) = raw.send("GET", "/nodes/", None).await;
    assert_eq!(nodes[0]["volume_kinds"], json!(["local"]));
    // A node that says nothing about its kinds (an older one) counts as able.
    register(&m, "older").await;
    assert_eq!(
        raw.send("POST", "/tasks/", Some(&with_kind("ebs", "e.example")))
            .await
            .0,
        201
    );
}

#[tokio::test]
async fn put_takes_what_get_gave_patch_merges_and_restart_counts() {
    let m = spawn(MasterOptions::default()).await;
    let raw = m.raw();
    let mut s = spec("app", "patch.example");
    s["env"] = json!({"A": "1", "B": "2"});
    s["command"] = json!(["serve", "--fast"]);
    s["secret_env"] = json!({"TOKEN": "t0p"});
    let (st, created) = raw.send("POST", "/tasks/", Some(&s.to_string())).await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let path = format!("/tasks/{id}");

    // PUT accepts the very body GET answered; another task's id is refused, naming `id`.
    let (_, got) = raw.send("GET", &path, None).await;
    assert_eq!(
        raw.send("PUT", &path, Some(&got.to_string())).await,
        (200, got.clone())
    );
    let mut other = got.clone();
    other["id"] = json!("0123456789abcdef0123456789abcdef");
    let (st, err) = raw.send("PUT", &path, Some(&other.to_string())).await;
    assert_eq!((st, err["field"].as_str()), (400, Some("id")), "{err}");

    // PATCH: members replace, null removes (back to the default), the rest stays, secrets too.
    let patch = json!({"env": {"B": null, "C": "3"}, "command": null, "idle_timeout_s": 42});
    let (st, patched) = raw.send("PATCH", &path, Some(&patch.to_string())).await;
    assert_eq!(st, 200, "{patched}");
    assert_eq!(patched["env"], json!({"A": "1", "C": "3"}));
    assert!(patched.get("command").is_none(), "{patched}");
    assert_eq!(patched["idle_timeout_s"], 42);
    assert_eq!(patched["name"], "app");
    assert_eq!(patched["secret_env"], json!({"TOKEN": null}));
    let stored = m.client.get_task(&id).await.expect("task");
    let watched = {
        let f = Follower::spawn(m.client.clone(), std::future::pending());
        f.synced().await;
        let t = f.read().task(&id).expect("task");
        t
    };
    assert_eq!(
        watched.spec.secret_env["TOKEN"].value(),
        Some("t0p"),
        "the secret was kept"
    );
    assert_eq!(stored.spec.idle_timeout_s, 42);
    // A patch that makes the spec invalid changes nothing and names the field.
    let (st, err) = raw
        .send("PATCH", &path, Some(&json!({"port": 0}).to_string()))
        .await;
    assert_eq!((st, err["field"].as_str()), (400, Some("port")), "{err}");
    let (st, _) = raw
        .send(
            "PATCH",
            "/tasks/0123456789abcdef0123456789abcdef",
            Some("{}"),
        )
        .await;
    assert_eq!(st, 404);

    // Restart counts up; the count is the master's.
    let (st, restarted) = raw.send("POST", &format!("{path}/restart"), None).await;
    assert_eq!(
        (st, restarted["restarts"].as_u64()),
        (200, Some(1)),
        "{restarted}"
    );
    let mut forged = restarted.clone();
    forged["restarts"] = json!(7);
    let (st, err) = raw.send("PUT", &path, Some(&forged.to_string())).await;
    assert_eq!(
        (st, err["field"].as_str()),
        (400, Some("restarts")),
        "{err}"
    );
    assert_eq!(
        raw.send("PUT", &path, Some(&restarted.to_string())).await.0,
        200
    );
}

#[tokio::test]
async fn a_stopping_master_answers_open_long_polls_at_once() {
    let m = spawn(MasterOptions::default()).await;
    let start = m
        .client
        .watch(None, 0, Duration::ZERO)
        .await
        .expect("watch");
    let client = m.client.clone();
    let epoch = start.epoch.clone();
    // A long poll with nothing to report: it would wait 60 s.
    let poll = tokio::spawn(async move {
        client
            .watch(Some(&epoch), start.revision, Duration::from_secs(60))
            .await
    });
    // The poll is waiting on the master before it stops (the stop would refuse a new one).
    let metrics = format!("{}/metrics", m.url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(&metrics)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        if text.lines().any(|l| l == "shadow_master_watchers 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long poll never reached the master"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stop does not wait out the poll: it ends well before the poll's 60 s.
    tokio::time::timeout(Duration::from_secs(20), m.stop())
        .await
        .expect("the graceful stop waited for the long poll");
    let answered = poll.await.expect("join").expect("the poll got an answer");
    assert!(
        !answered.reset && answered.events.is_empty(),
        "{answered:?}"
    );
}
